"""The README's quick start runs as written on a fresh machine (issue 17): no checkpoint, no team data.

Each ``.venv/bin/evit`` line of the block is run in a new process, in an empty folder, with ``EVIT_SHARED``
pointing nowhere; only the venv's path is this interpreter's. Slow: it exports and benchmarks seg-B0 at
the block's 256x512.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EVIT = ".venv/bin/evit"


def quick_start_commands() -> list[list[str]]:
    """The ``.venv/bin/evit`` lines of the first code block under "## Quick start", comments dropped."""
    section = README.read_text().split("## Quick start", 1)[1]
    block = section.split("```", 2)[1]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith(EVIT)]


def test_the_quick_start_block_is_found() -> None:
    commands = quick_start_commands()
    assert [command[1] for command in commands] == ["models", "export", "verify", "profile", "benchmark"]
    assert not any("--weights" in command for command in commands), "the quick start needs no checkpoint"


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "EVIT_SHARED": str(tmp_path / "no-shared-data")}
    for command in quick_start_commands():
        proc = subprocess.run([sys.executable, "-m", "evit_deploy.cli", *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1800, check=False)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "efficientvit-seg-b0-cityscapes.onnx").is_file()
    assert (tmp_path / "bench" / "benchmark.md").is_file() and (tmp_path / "bench" / "latency.png").is_file()
