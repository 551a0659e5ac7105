"""The floors of ARCHITECTURE.md hold: imports run down, no cycles, modules stay small."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "evit_deploy"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# Modules allowed past the size limit, each with its reason in ARCHITECTURE.md.
LONG_MODULES = {"mil/ops.py"}  # the MIL op table: one small function per Core ML op


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=300, check=False,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_imports_run_down_the_floors_without_cycles() -> None:
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_a_cycle_breaks_the_build(tmp_path: Path) -> None:
    """The contract is live: an import up a floor (here a cycle spec -> api -> ... -> spec) fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "evit_deploy", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    spec = copy / "evit_deploy" / "spec.py"
    spec.write_text(spec.read_text() + "\nfrom evit_deploy import api  # noqa: E402,F401 - the planted cycle\n")
    done = _lint_imports(copy)
    assert done.returncode != 0
    assert "evit_deploy.spec is not allowed to import evit_deploy.api" in done.stdout
    assert "BROKEN" in done.stdout


def test_no_module_over_450_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
            if len(p.read_text().splitlines()) > 450}
    assert set(long) <= LONG_MODULES, long
    architecture = (REPO / "ARCHITECTURE.md").read_text()
    assert all(name in architecture for name in LONG_MODULES)
