"""Issue 14 item 4: a disk that fills while exporting is one line naming where (exit 2), the staging
folder goes, and an artifact already there stays as it was.

Needs a real full filesystem: a 1 MiB tmpfs, which only root can mount (skipped otherwise)."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def evit(*args: object) -> subprocess.CompletedProcess[str]:
    """A real process: a full disk is felt by whatever the process writes, logging included."""
    return subprocess.run([sys.executable, "-m", "evit_deploy.cli", *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=900)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.filterwarnings("ignore:efficientvit-b0-r224 has random weights")
@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_a_full_disk_is_one_line_and_keeps_the_old_artifact(tiny_disk: Path, target: str) -> None:
    out = tiny_disk / "out"
    out.mkdir()
    old = out / f"efficientvit-b0-r224.{target}"
    old.write_text("the artifact of yesterday")
    result = evit("export", "efficientvit-b0-r224", "--target", target, "--resolution", "64", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (f"error: no space left on the device holding {out} (No space left on device); free space "
                    "there or choose another --out (nothing was published)"), line
    assert sorted(p.name for p in out.iterdir()) == [old.name]  # no staging folder, no half-written file
    assert old.read_text() == "the artifact of yesterday"


def test_a_full_disk_in_a_folder_evit_made_leaves_no_folder(tiny_disk: Path) -> None:
    out = tiny_disk / "new" / "out"
    result = evit("export", "efficientvit-b0-r224", "--target", "onnx", "--resolution", "64", "--out", str(out))
    assert result.returncode == 2 and "no space left on the device holding" in result.stderr
    assert list(tiny_disk.iterdir()) == []
