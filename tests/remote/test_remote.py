"""`--device NAME` end to end against a real sshd on 127.0.0.1 running this checkout's evit."""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from evit_deploy.manifest import manifest_path_for

from .helpers import copy_as, perturb_onnx, rehash

FAST = ("--iters", "3", "--warmup", "1")


def _store(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "artifacts").glob("*/*") if p.is_file())


def test_profile_on_device_gives_the_local_fields_and_copies_once(cli, inventory, onnx_artifact, tmp_path):
    inv = inventory()
    local = cli("profile", onnx_artifact, *FAST, "--json", "-")
    assert local.code == 0, local
    first = cli("profile", onnx_artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert first.code == 0, first
    local_data, remote_data = json.loads(local.stdout), json.loads(first.stdout)
    assert set(remote_data) == set(local_data)
    assert set(remote_data["latency_ms"]) == set(local_data["latency_ms"])
    assert set(remote_data["runner"]) == set(local_data["runner"])
    assert set(remote_data["host"]) >= set(local_data["host"])
    assert remote_data["device"] == "loop" and remote_data["artifact"] == str(onnx_artifact)
    remote = remote_data["host"]["remote"]
    assert remote["copy"] == "uploaded" and remote["uploaded_bytes"] > onnx_artifact.stat().st_size
    assert remote_data["host"]["state"]["cpu"]  # the device's state travels with every result
    stored = _store(tmp_path / "device-work")
    assert [p.name for p in stored] == sorted([onnx_artifact.name, manifest_path_for(onnx_artifact).name])
    sha = json.loads(manifest_path_for(onnx_artifact).read_text())["files"][0]["sha256"]
    assert stored[0].parent.name == sha  # content-addressed: <workdir>/artifacts/<sha256>/
    stamps = {p: p.stat().st_mtime_ns for p in stored}

    second = cli("profile", onnx_artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert second.code == 0, second
    again = json.loads(second.stdout)["host"]["remote"]
    assert again["copy"] == "skipped" and again["uploaded_bytes"] == 0
    assert {p: p.stat().st_mtime_ns for p in _store(tmp_path / "device-work")} == stamps


def test_profile_table_shows_the_device_and_its_state(cli, inventory, onnx_artifact):
    result = cli("profile", onnx_artifact, "--device", "loop", "--inventory", inventory(), *FAST)
    assert result.code == 0, result
    assert "loop · onnxruntime" in result.stdout and "device state" in result.stdout
    assert "artifact copy" in result.stdout


def test_a_damaged_copy_on_the_device_is_replaced(cli, inventory, onnx_artifact, tmp_path):
    inv = inventory()
    assert cli("profile", onnx_artifact, "--device", "loop", "--inventory", inv, *FAST).code == 0
    remote_copy = next(p for p in _store(tmp_path / "device-work") if p.suffix == ".onnx")
    with remote_copy.open("ab") as handle:
        handle.write(b"\0")
    result = cli("profile", onnx_artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert result.code == 0, result
    assert json.loads(result.stdout)["host"]["remote"]["copy"] == "uploaded"


@pytest.mark.slow  # the TFLite conversion takes a minute on two cores
def test_tflite_profile_on_device(cli, inventory, tmp_path):
    from evit_deploy.targets.base import all_targets, get_target

    if "tflite" not in all_targets():
        pytest.skip("the tflite target is not in this checkout yet")
    reason = get_target("tflite").available() or get_target("tflite").runtime_available()
    if reason:
        pytest.skip(f"tflite cannot export or run here: {reason}")
    import warnings

    from evit_deploy import api

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded random weights are the point here
        artifact = api.export("efficientvit-seg-b0-cityscapes", target="tflite", out=tmp_path / "tfl",
                              resolution=(64, 128)).artifact
    inv = inventory()
    local = cli("profile", artifact, *FAST, "--json", "-")
    remote = cli("profile", artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert local.code == 0 and remote.code == 0, (local, remote)
    local_data, remote_data = json.loads(local.stdout), json.loads(remote.stdout)
    assert set(remote_data) == set(local_data) and remote_data["target"] == "tflite"
    assert set(remote_data["runner"]) == set(local_data["runner"])
    again = cli("profile", artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert json.loads(again.stdout)["host"]["remote"]["copy"] == "skipped"


def test_verify_on_device_passes(cli, inventory, onnx_artifact, tmp_path):
    artifact = copy_as(onnx_artifact, tmp_path / "art", onnx_artifact.stem)
    result = cli("verify", artifact, "--device", "loop", "--inventory", inventory(), "--samples", "2",
                 "--json", tmp_path / "v.json")
    assert result.code == 0, result
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["samples"] == 2
    assert report["runner"]["backend"] == "onnxruntime" and report["runner"]["remote"]["device"] == "loop"
    assert "device: loop" in result.stdout


def test_verify_of_perturbed_weights_fails_with_exit_1(cli, inventory, onnx_artifact, tmp_path):
    artifact = copy_as(onnx_artifact, tmp_path / "art", onnx_artifact.stem)
    perturb_onnx(artifact)
    rehash(artifact)  # a complete artifact that computes something else: the device runs it, parity catches it
    result = cli("verify", artifact, "--device", "loop", "--inventory", inventory(), "--samples", "1")
    assert result.code == 1, result
    assert len(result.error_lines) == 1 and "parity failed" in result.error_lines[0]


def test_verify_of_modified_bytes_is_refused_before_anything_travels(cli, inventory, onnx_artifact, tmp_path):
    artifact = copy_as(onnx_artifact, tmp_path / "art", onnx_artifact.stem)
    with artifact.open("ab") as handle:
        handle.write(b"\0")
    for command in ("verify", "profile"):
        result = cli(command, artifact, "--device", "loop", "--inventory", inventory())
        assert result.code == 2, result
        assert len(result.error_lines) == 1 and "changed after export" in result.error_lines[0]
    assert not (tmp_path / "device-work").exists()


def test_the_device_runs_without_torch(cli, inventory, onnx_artifact, tmp_path):
    """A torch that refuses to import on the device: verify (reference here) and profile still work."""
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch must not be imported on the device')\n")
    inv = inventory(notorch={"env": {"PYTHONPATH": str(fake.parent)}})
    artifact = copy_as(onnx_artifact, tmp_path / "art", onnx_artifact.stem)
    verified = cli("verify", artifact, "--device", "notorch", "--inventory", inv, "--samples", "1")
    assert verified.code == 0, verified
    profiled = cli("profile", artifact, "--device", "notorch", "--inventory", inv, *FAST)
    assert profiled.code == 0, profiled


def test_shell_metacharacters_in_names_and_paths_run_nothing(cli, inventory, onnx_artifact, tmp_path):
    tag = uuid.uuid4().hex[:10]
    markers = [tmp_path / f"pwned-{tag}-{i}" for i in range(4)]
    home_markers = [Path.home() / f"pwned-{tag}-{i}" for i in range(4)]
    # The artifact's own name (no '/' possible in a file name: relative markers land in the login dir).
    stem = f"model; touch pwned-{tag}-0 $(touch pwned-{tag}-1) `touch pwned-{tag}-2` 'q\" x"
    artifact = copy_as(onnx_artifact, tmp_path / f"dir with space $(touch {markers[3]})", stem)
    # The device's work directory, from the inventory, with absolute markers.
    workdir = tmp_path / f"work $(touch {markers[0]}); touch {markers[1]} && touch {markers[2]} #"
    inv = inventory(workdir=workdir)
    profiled = cli("profile", artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert profiled.code == 0, profiled
    assert json.loads(profiled.stdout)["host"]["remote"]["artifact"].endswith(artifact.name)
    verified = cli("verify", artifact, "--device", "loop", "--inventory", inv, "--samples", "1")
    assert verified.code == 0, verified
    assert (workdir / "artifacts").is_dir()  # the odd path was used literally
    for marker in markers + home_markers:
        assert not marker.exists(), f"{marker} was created: a name reached a shell"


def test_two_entries_on_one_sshd_run_in_parallel(cli, inventory, onnx_artifact, tmp_path):
    inv = inventory(loop={}, loop2={"python": str(Path(sys.executable).parent / "python")})
    result = cli("profile", onnx_artifact, "--device", "loop,loop2", "--inventory", inv, *FAST, "--json", "-")
    assert result.code == 0, result
    data = json.loads(result.stdout)
    assert [r["device"] for r in data["results"]] == ["loop", "loop2"] and data["errors"] == []
    table = cli("profile", onnx_artifact, "--device", "loop,loop2", "--inventory", inv, *FAST)
    assert table.code == 0 and "loop2 · onnxruntime" in table.stdout and "2 of 2 device(s)" in table.stdout


def test_one_unreachable_device_fails_its_row_not_the_run(cli, inventory, onnx_artifact, tmp_path):
    from .conftest import _free_port

    inv = inventory(loop={}, down={"port": _free_port()})
    result = cli("profile", onnx_artifact, "--device", "down,loop", "--inventory", inv, *FAST,
                 "--json", tmp_path / "p.json")
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and "device down" in result.error_lines[0]
    assert "unreachable" in result.error_lines[0]
    assert "loop · onnxruntime" in result.stdout  # the reachable device's column is still shown
    data = json.loads((tmp_path / "p.json").read_text())
    assert [r["device"] for r in data["results"]] == ["loop"]
    assert data["errors"][0]["device"] == "down" and data["errors"][0]["exit_code"] == 2


def test_devices_lists_and_checks(cli, inventory):
    inv = inventory(loop={"preset": "raspberry-pi", "description": "the loopback"})
    listed = cli("devices", "--inventory", inv)
    assert listed.code == 0 and "loop" in listed.stdout and "jetson-orin" in listed.stdout
    checked = cli("devices", "check", "loop", "--inventory", inv, "--json")
    assert checked.code == 0, checked
    report = json.loads(checked.stdout)
    assert report["reachable"] and report["evit"] and report["system"]["cpu"] and report["system"]["memory_mb"]
    assert report["targets"]["onnx"] is None  # None: the device can run onnx artifacts
    assert "onnxruntime" in report["system"]["runtimes"]
    table = cli("devices", "check", "loop", "--inventory", inv)
    assert table.code == 0 and "reachable" in table.stdout and "runtime onnxruntime" in table.stdout


def test_power_and_lock_clocks_are_refused_off_jetson(cli, inventory, onnx_artifact):
    for flag in ("--power", "--lock-clocks"):
        result = cli("profile", onnx_artifact, "--device", "loop", "--inventory", inventory(), flag, *FAST)
        assert result.code == 2, result
        assert len(result.error_lines) == 1 and "supported only on Jetson" in result.error_lines[0]
        assert "device loop" in result.error_lines[0]


def test_a_changed_manifest_travels_alone(cli, inventory, onnx_artifact, tmp_path):
    artifact = copy_as(onnx_artifact, tmp_path / "art", onnx_artifact.stem)
    inv = inventory()
    assert cli("profile", artifact, "--device", "loop", "--inventory", inv, *FAST).code == 0
    manifest = manifest_path_for(artifact)
    data = json.loads(manifest.read_text())
    data["details"]["runner"]["graph_optimization"] = "basic"  # same bytes, another recorded session setting
    manifest.write_text(json.dumps(data))
    result = cli("profile", artifact, "--device", "loop", "--inventory", inv, *FAST, "--json", "-")
    assert result.code == 0, result
    remote = json.loads(result.stdout)
    assert remote["host"]["remote"]["copy"] == "manifest"
    assert remote["host"]["remote"]["uploaded_bytes"] < artifact.stat().st_size / 10
    assert remote["runner"]["graph_optimization"] == "basic"  # the device ran with the new manifest
