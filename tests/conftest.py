"""Shared fixtures: where the team's reference data lives, and seeded weights."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EVIT_SHARED", REPO.parent / "shared")).resolve()
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE}; set EVIT_SHARED to the shared/ folder")
    return REFERENCE


def _load_seeded_weights() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seeded_weights", REFERENCE / "fixtures" / "seeded_weights.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def seeded_weights() -> ModuleType:
    """The team's ``seeded_weights`` module: trained-looking weights from a key list and a seed."""
    return _load_seeded_weights()


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory: pytest.TempPathFactory, seeded_weights: ModuleType, reference_dir: Path):
    """``seeded_checkpoint("efficientvit_seg_b1_cityscapes")`` -> a .safetensors of trained-looking weights."""
    cache: dict[tuple[str, int], Path] = {}

    def make(builder: str, seed: int = 1234) -> Path:
        if (builder, seed) not in cache:
            path = tmp_path_factory.mktemp("weights") / f"{builder}-{seed}.safetensors"
            sd = seeded_weights.state_dict(reference_dir / "state_dict_keys" / f"{builder}.txt", seed)
            seeded_weights.save(sd, path)
            cache[builder, seed] = path
        return cache[builder, seed]

    return make


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def cli():
    """Run ``evit ARGS`` in-process; returns exit code, stdout and stderr separately."""
    from typer.testing import CliRunner

    from evit_deploy.cli import app

    runner = CliRunner()

    def invoke(*args: object) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke
