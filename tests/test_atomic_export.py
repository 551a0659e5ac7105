"""An export killed with SIGKILL at any point never leaves an artifact that looks complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evit_deploy.manifest import load_manifest

MODEL = "efficientvit-seg-b0-cityscapes"


def _export(out: Path) -> subprocess.Popen:
    code = ("import sys; from evit_deploy.cli import main; sys.argv = ['evit'] + sys.argv[1:]; main()")
    return subprocess.Popen([sys.executable, "-c", code, "export", MODEL, "--resolution", "64x128", "--out", str(out),
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, delay: float) -> None:
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_not_half_written(out: Path) -> None:
    for artifact in out.glob("*.onnx"):
        manifest = artifact.with_name(artifact.name.replace(".onnx", ".evit.json"))
        if manifest.exists():  # then the export finished: the manifest must vouch for the file
            load_manifest(artifact)


@pytest.mark.parametrize("moment", ["staging", "staging+2s", "artifact-appears"])
def test_sigkill_leaves_no_onnx_with_manifest(tmp_path, moment):
    out = tmp_path / "out"
    proc = _export(out)
    if moment == "artifact-appears":
        _kill_when(proc, lambda: (out / f"{MODEL}.onnx").exists(), 0.0)
    else:
        _kill_when(proc, lambda: any(out.glob(".evit-staging-*")), 2.0 if moment.endswith("2s") else 0.0)
    assert proc.returncode in (-signal.SIGKILL, 0)
    _assert_not_half_written(out)
    if proc.returncode == -signal.SIGKILL and moment != "artifact-appears":
        assert not (out / f"{MODEL}.evit.json").exists()


def test_reexport_over_an_old_artifact_is_never_paired_with_the_old_manifest(tmp_path):
    out = tmp_path / "out"
    first = _export(out)
    assert first.wait() == 0
    proc = _export(out)
    # kill as soon as the new export removes the old manifest (the first step of publishing)
    _kill_when(proc, lambda: not (out / f"{MODEL}.evit.json").exists(), 0.0)
    _assert_not_half_written(out)
