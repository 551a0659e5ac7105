"""Issue 14 item 22: staging folders never outlive an export for long.

SIGTERM/SIGHUP remove an export's staging folder at once; a SIGKILLed export's folder is
removed by the next export into the same ``--out``, never one a running export holds. Every
signal here is real, sent to a real evit process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evit_deploy.manifest import STAGING_PREFIX, load_manifest, remove_stale_staging, staging_dir

MODEL = "efficientvit-seg-b0-cityscapes"
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _export(out: Path, name: str = MODEL) -> subprocess.Popen:
    # SIGHUP at its default action, as from a shell: under nohup (a suite started that way) the
    # export would inherit it ignored, which evit rightly leaves alone, and the SIGHUP case ran to
    # the end and exited 0
    code = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); from evit_deploy.cli import main; "
            "sys.argv = ['evit'] + sys.argv[1:]; main()")
    return subprocess.Popen([sys.executable, "-c", code, "export", MODEL, "--resolution", "64x128", "--out", str(out),
                             "--name", name, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())


def _holder(out: Path) -> subprocess.Popen:
    """A process inside ``staging_dir(out)`` (what every export runs in) until it is signalled."""
    code = ("import sys, time; from pathlib import Path; from evit_deploy.manifest import staging_dir\n"
            "with staging_dir(Path(sys.argv[1])) as p:\n    print(p, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the holder never entered its staging folder"
    return proc


def _staging(out: Path) -> list[Path]:
    return sorted(out.glob(STAGING_PREFIX + "*"))


def _signal_when_staging(proc: subprocess.Popen, out: Path, signum: int, delay: float) -> None:
    deadline = time.monotonic() + 120
    while not _staging(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the export finished before it could be signalled"
    os.kill(proc.pid, signum)
    proc.wait(60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_terminated_export_removes_its_staging_folder(tmp_path, signum):
    out = tmp_path / "out"
    proc = _export(out)
    # soon after staging starts: a second's wait could let a fast export finish first
    _signal_when_staging(proc, out, signum, 0.2)
    assert proc.returncode == 128 + signum, proc.stderr.read() if proc.stderr else ""
    assert _staging(out) == [] and not (out / f"{MODEL}.evit.json").exists()
    assert b"Traceback" not in (proc.stderr.read() if proc.stderr else b"")


def test_the_next_export_removes_what_sigkill_left(tmp_path):
    out = tmp_path / "out"
    proc = _export(out)
    _signal_when_staging(proc, out, signal.SIGKILL, 1.0)
    assert proc.returncode == -signal.SIGKILL
    assert len(_staging(out)) == 1  # today's behaviour: SIGKILL runs no cleanup
    again = _export(out)
    assert again.wait(300) == 0, again.stderr.read() if again.stderr else ""
    assert _staging(out) == []
    load_manifest(out / f"{MODEL}.onnx")


def test_a_running_exports_staging_folder_is_left_alone(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        (held,) = _staging(out)
        time.sleep(1.1)  # older than the next export, so only its lock protects it
        other = _export(out, name="other")
        assert other.wait(300) == 0, other.stderr.read() if other.stderr else ""
        assert _staging(out) == [held]
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(60)
    assert holder.returncode == 128 + signal.SIGTERM and _staging(out) == []


def test_only_unlocked_folders_older_than_this_process_are_stale(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old, new = out / f"{STAGING_PREFIX}old", out / f"{STAGING_PREFIX}new"
    old.mkdir(), new.mkdir()
    (old / "half.onnx").write_bytes(b"x")
    os.utime(old, (0, 0))  # written long before this process started
    assert remove_stale_staging(out) == [old]
    assert not old.exists() and new.exists()  # made after this process started: maybe an export about to lock it


def test_staging_leaves_the_default_signal_handlers_as_they_were(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with staging_dir(tmp_path) as path:
        assert path.is_dir() and signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before and not path.exists()
