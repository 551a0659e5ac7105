"""A real OpenSSH server on 127.0.0.1 as a "device" that is this machine.

The fixture generates host and user keys (ssh-keygen), a known_hosts with the host key,
and an sshd_config listening on a free loopback port with ``StrictModes no``, then runs
``sshd -D`` until the session ends. The device runs this checkout's evit (derived from
``sys.executable``). Tests skip with the reason only where sshd cannot run here.
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

LOOPBACK = "127.0.0.1"  # the only address these tests ever connect to
SEG = "efficientvit-seg-b0-cityscapes"


@dataclass
class Sshd:
    port: int
    root: Path
    user: str
    user_key: Path
    other_key: Path  # a key the server does not accept
    known_hosts: Path
    other_known_hosts: Path  # the right address with another host key (a "changed" key)
    empty_known_hosts: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "evit-test", "-f", str(path)],
                   check=True, capture_output=True)


def _public(path: Path) -> str:
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _start(sshd: str, config: Path, log: Path, port: int) -> subprocess.Popen | None:
    with log.open("w") as handle:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return proc
        time.sleep(0.05)
    proc.terminate()
    proc.wait()
    return None


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    binary = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if binary is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server or client not installed here (apt install openssh-server openssh-client); "
                    ".ci/run installs them")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "other_host_key", "user_key", "other_key"):
        _keygen(root / name)
    (root / "authorized_keys").write_text(_public(root / "user_key") + "\n")
    port = _free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        f"ListenAddress {LOOPBACK}",
        f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        f"PidFile {root / 'sshd.pid'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "MaxStartups 50",
        "LogLevel ERROR",
        "",
    ]))
    log = root / "sshd.log"
    proc = _start(binary, config, log, port)
    if proc is None:
        missing = re.search(r"Missing privilege separation directory: (\S+)", log.read_text())
        if missing and os.geteuid() == 0:  # what the distribution's service unit would create
            Path(missing.group(1)).mkdir(mode=0o755, parents=True, exist_ok=True)
            proc = _start(binary, config, log, port)
    if proc is None:
        reason = log.read_text().strip().splitlines()
        pytest.skip(f"sshd cannot run here: {reason[-1] if reason else 'it exited at once'}")
    known = root / "known_hosts"
    known.write_text(f"[{LOOPBACK}]:{port} {_public(root / 'host_key')}\n")
    other = root / "changed_known_hosts"
    other.write_text(f"[{LOOPBACK}]:{port} {_public(root / 'other_host_key')}\n")
    empty = root / "empty_known_hosts"
    empty.write_text("")
    try:
        yield Sshd(port, root, getpass.getuser(), root / "user_key", root / "other_key", known, other, empty)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def evit_here() -> str:
    """This checkout's evit, as the device runs it."""
    return str(Path(sys.executable).parent / "evit")


@pytest.fixture
def inventory(sshd: Sshd, tmp_path: Path):
    """``inventory(name={...}, ...)`` -> a devices.yaml whose entries reach the test sshd by default."""

    def write(workdir: Path | None = None, **entries: dict) -> Path:
        defaults = {
            "host": LOOPBACK,
            "port": sshd.port,
            "user": sshd.user,
            "identity_file": str(sshd.user_key),
            "ssh_config": "/dev/null",  # the tests' ssh ignores the user's ~/.ssh/config
            "ssh_options": {"UserKnownHostsFile": str(sshd.known_hosts), "GlobalKnownHostsFile": "/dev/null"},
            "workdir": str(workdir or tmp_path / "device-work"),
            "evit": evit_here(),
            "connect_timeout": 10,
            "command_timeout": 300,
        }
        path = tmp_path / "devices.yaml"
        path.write_text(yaml.safe_dump({"defaults": defaults, "devices": entries or {"loop": {}}}))
        return path

    return write


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ONNX artifact (seg-B0 at 64x128, seeded random weights) made once per session."""
    import warnings

    from evit_deploy import api

    out = tmp_path_factory.mktemp("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return api.export(SEG, target="onnx", out=out, resolution=(64, 128)).artifact
