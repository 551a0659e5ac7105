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
