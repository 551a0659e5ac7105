"""Parametrisation from the shared reference data, plus seeded-weight model loading."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evit_deploy.nn import build_model

# Same resolution as tests/conftest.py; needed at collection time, before fixtures exist.
_REFERENCE = (
    Path(os.environ.get("EVIT_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "reference"
).resolve()


def key_files() -> list[Path]:
    """Every official key list: classification, segmentation and SAM (whole model)."""
    folder = _REFERENCE / "state_dict_keys"
    return sorted(folder.glob("efficientvit_*.txt"))


def fixture_cases() -> dict[str, dict[str, Any]]:
    index = _REFERENCE / "fixtures" / "index.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def builder_of_key_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``efficientvit_seg_b1_ade20k.txt`` -> (``efficientvit_seg_b1``, {"dataset": "ade20k"});
    cls and SAM files are named after their builder."""
    parts = path.stem.split("_")
    if parts[1] == "seg":
        return "_".join(parts[:3]), {"dataset": parts[3]}
    return path.stem, {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "key_file" in metafunc.fixturenames:
        files = key_files()
        metafunc.parametrize("key_file", files, ids=[p.stem for p in files])
    if "fixture_case" in metafunc.fixturenames:
        cases = fixture_cases()
        metafunc.parametrize("fixture_case", list(cases.items()), ids=list(cases))


def read_keys(path: Path) -> list[tuple[str, list[int]]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape = line.split("\t")
            pairs.append((name, json.loads(shape)))
    return pairs


@pytest.fixture(scope="session")
def seeded_state_dict(seeded_weights: Any) -> Callable[[Path, int], dict[str, np.ndarray]]:
    """``seeded_weights.state_dict``, remembered for the next call (digest check, then load)."""
    return functools.lru_cache(maxsize=1)(seeded_weights.state_dict)


@pytest.fixture(scope="session")
def seeded_model(
    seeded_state_dict: Callable[[Path, int], dict[str, np.ndarray]],
) -> Callable[..., torch.nn.Module]:
    """Build a model and load the fixtures' trained-looking weights (strict)."""

    def load(
        builder: str, kwargs: dict[str, Any], norm_eps: float, keys_file: Path, seed: int
    ) -> torch.nn.Module:
        weights = seeded_state_dict(Path(keys_file).resolve(), seed)
        model = build_model(builder, norm_eps=norm_eps, **kwargs)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
        return model

    return load
