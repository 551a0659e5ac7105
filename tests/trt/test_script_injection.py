"""Issue 14 item 1: a hostile ``--name`` in the generated ``NAME.trtexec.sh`` runs nothing.

The script is run for real under ``bash`` (``TRTEXEC=/bin/true`` stands in for trtexec), once
where the device's python3 cannot import evit_deploy (the fallback branch, the usual Jetson case)
and once where it can; neither may create the files the name's ``$(...)`` and backticks ask for.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evit_deploy.trt.plan import BuildPlan, script

HOSTILE = "m;$(touch pwned);`touch pwned2`"
NEWLINE = "m\ntouch pwned3\n#"
REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash to run the generated script")


def _plan(name: str) -> BuildPlan:
    return BuildPlan(model=name, task="classification", precision="fp32", trt_version="8.6", trt_major=8,
                     typing="weak", onnx=f"{name}.onnx", onnx_sha256="0" * 64, engine=f"{name}.engine",
                     layer_info=f"{name}.layers.json", static_shape=[1, 3, 64, 64])


def _run(script_path: Path, cwd: Path, *, evit_importable: bool) -> subprocess.CompletedProcess:
    """The script under bash with trtexec replaced by /bin/true; python3 on PATH either imports
    evit_deploy (this venv's interpreter, repo on PYTHONPATH) or does not (no such module)."""
    bin_dir = cwd / ("bin-evit" if evit_importable else "bin-plain")
    bin_dir.mkdir(exist_ok=True)
    python = sys.executable if evit_importable else shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("needs a system python3 without evit_deploy for the fallback branch")
    link = bin_dir / "python3"
    if not link.exists():
        link.symlink_to(python)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TRTEXEC": "/bin/true", "HOME": str(cwd)}
    if evit_importable:
        env["PYTHONPATH"] = str(REPO)
    return subprocess.run([BASH, str(script_path)], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _planted(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("pwned*")]


@pytest.mark.parametrize("name", [HOSTILE, NEWLINE], ids=["substitutions", "newline"])
@pytest.mark.parametrize("importable", [False, True], ids=["fallback", "inspect"])
def test_script_quotes_every_name(tmp_path, name, importable):
    folder = tmp_path / "o" / "d ir"
    folder.mkdir(parents=True)
    path = folder / "m.trtexec.sh"
    plan = _plan(name)
    path.write_text(script(plan, f"{name}.trt-plan.json"))
    done = _run(path, tmp_path, evit_importable=importable)
    assert not _planted(tmp_path), done.stderr
    if not importable:
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith(f"built {plan.engine}; check its layer precisions with:\n"), done.stderr


def test_hostile_name_through_evit_export_runs_nothing(tmp_path, cli):
    """The issue's reproduction: export with the hostile ``--name`` into ``--out "o/d ir"``, run the script."""
    out = tmp_path / "o" / "d ir"
    result = cli("export", "efficientvit-b0-r224", "--target", "trt", "--plan-only", "--resolution", "64x64",
                 "--out", out, "--name", HOSTILE, "-q")
    assert result.code == 0, result
    path = out / f"{HOSTILE}.trtexec.sh"
    assert path.is_file() and os.access(path, os.X_OK)
    for importable in (False, True):
        done = _run(path, tmp_path, evit_importable=importable)
        assert not _planted(tmp_path), done.stderr
    assert "built " + HOSTILE + ".engine" in _run(path, tmp_path, evit_importable=False).stderr
