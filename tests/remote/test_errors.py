"""Every way reaching a device can fail gives one clear line and exit 2 (real failures, real sshd)."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from .conftest import _free_port


def _one_line(result, *needles: str) -> str:
    assert result.code == 2, result
    assert len(result.error_lines) == 1, result
    assert "Traceback" not in result.stderr
    line = result.error_lines[0]
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def fail(cli, inventory, onnx_artifact):
    """``fail(entry)`` -> the CLI result of profiling on a device described by ``entry``."""

    def run(entry: dict, command: str = "profile"):
        inv = inventory(dev=entry)
        if command == "check":
            return cli("devices", "check", "dev", "--inventory", inv)
        extra = ("--iters", "2", "--warmup", "0") if command == "profile" else ("--samples", "1")
        return cli(command, onnx_artifact, "--device", "dev", "--inventory", inv, *extra)

    return run


def test_closed_port(fail):
    line = _one_line(fail({"port": _free_port()}), "device dev", "unreachable", "connection refused")
    assert "127.0.0.1" in line


def test_wrong_key(fail, sshd):
    _one_line(fail({"identity_file": str(sshd.other_key)}), "authentication failed", "identity_file")


def test_changed_host_key(fail, sshd):
    _one_line(fail({"ssh_options": {"UserKnownHostsFile": str(sshd.other_known_hosts),
                                    "GlobalKnownHostsFile": "/dev/null"}}),
              "host key", "CHANGED", "ssh-keygen -R")


def test_unknown_host_key_is_never_accepted(fail, sshd):
    _one_line(fail({"ssh_options": {"UserKnownHostsFile": str(sshd.empty_known_hosts),
                                    "GlobalKnownHostsFile": "/dev/null"}}, "check"),
              "not in known_hosts", "never accepts")
    assert sshd.empty_known_hosts.read_text() == ""  # nothing was added behind the user's back


def test_unknown_device_name(cli, inventory, onnx_artifact):
    inv = inventory()
    result = cli("profile", onnx_artifact, "--device", "nosuch", "--inventory", inv)
    _one_line(result, "unknown device 'nosuch'", "loop", "evit devices")
    result = cli("verify", onnx_artifact, "--device", "loop,nosuch", "--inventory", inv)
    assert result.code == 2


def test_missing_inventory_file(cli, onnx_artifact, tmp_path):
    result = cli("profile", onnx_artifact, "--device", "loop", "--inventory", tmp_path / "none.yaml")
    _one_line(result, "inventory not found")


def test_evit_missing_on_the_device(fail):
    _one_line(fail({"evit": "/nonexistent/bin/evit"}), "evit is not installed there", "/nonexistent/bin/evit")


def test_python_without_evit_on_the_device(fail, tmp_path):
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\necho \"/usr/bin/python3: No module named evit_deploy\" >&2\nexit 1\n")
    bare.chmod(bare.stat().st_mode | stat.S_IEXEC)
    _one_line(fail({"evit": None, "python": str(bare)}), "evit-deploy is not installed")


def test_another_evit_version_on_the_device(fail, tmp_path):
    old = tmp_path / "old-evit"
    hello = {"ok": True, "protocol": 1, "evit": "0.0.1", "python": "3.10", "hostname": "x", "state": {},
             "payload": 0}
    old.write_text(f"#!/bin/sh\nprintf '%s\\n' 'EVIT1 {json.dumps(hello)}'\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    _one_line(fail({"evit": str(old)}), "evit there is 0.0.1", "pip install 'evit-deploy==")


def test_an_evit_without_the_worker(fail, tmp_path):
    old = tmp_path / "older-evit"
    old.write_text("#!/bin/sh\necho \"Error: No such command '_worker'.\" >&2\nexit 2\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    _one_line(fail({"evit": str(old)}), "another version")


def test_runtime_that_fails_to_load_on_the_device(fail, tmp_path):
    fake = tmp_path / "broken-ort" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n")
    for command in ("profile", "verify"):
        _one_line(fail({"env": {"PYTHONPATH": str(fake.parent)}}, command), "device dev:", "runtime", "libonnxruntime")


def test_a_command_that_outlives_its_timeout(fail, tmp_path):
    slow = tmp_path / "slow-evit"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    _one_line(fail({"evit": str(slow), "command_timeout": 2}), "no answer within 2 s", "command_timeout")


def test_inventory_errors_are_one_line(cli, onnx_artifact, tmp_path):
    bad = tmp_path / "bad.yaml"
    for body, needle in (
        ("devices: {x: {host: 'a;b'}}", "host"),
        ("devices: {cpu: {host: a}}", "means this machine"),
        ("devices: {x: {host: a, evit: e, python: p}}", "either evit"),
        ("devices: {x: {host: a, preset: toaster}}", "preset"),
        ("devices: {x: {host: a, colour: red}}", "colour"),
        ("machines: {}", "top-level"),
        ("devices: [", "YAML"),
    ):
        bad.write_text(body)
        _one_line(cli("profile", onnx_artifact, "--device", "x", "--inventory", bad), needle)
    assert Path(bad).exists()


def test_a_runtime_device_the_device_lacks(cli, inventory, onnx_artifact):
    result = cli("profile", onnx_artifact, "--device", "loop:cuda", "--inventory", inventory(), "--iters", "2")
    _one_line(result, "device loop:", "CUDA", "--device loop:cpu")
