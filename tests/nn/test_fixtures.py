"""Parity with the official implementation's outputs on trained-looking seeded weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from evit_deploy.nn import build_model, norm_eps_for, official_registry


def test_matches_official_output(
    fixture_case: tuple[str, dict[str, Any]],
    reference_dir: Any,
    seeded_weights: Any,
    seeded_state_dict: Any,
    seeded_model: Any,
) -> None:
    _, case = fixture_case
    fixtures = reference_dir / "fixtures"
    builder, kwargs, eps = official_registry()[case["model"]]
    assert eps == norm_eps_for(builder)
    keys_file = (fixtures / case["weights"]["keys"]).resolve()
    assert keys_file.stem == "_".join([builder, *kwargs.values()]), "fixture weights are for another builder"

    weights = seeded_state_dict(keys_file, case["weights"]["seed"])
    assert seeded_weights.digest(weights) == case["weights"]["sha256"], "seeded weights rebuilt differently"

    model = seeded_model(builder, kwargs, eps, keys_file, case["weights"]["seed"])
    x = torch.from_numpy(np.load(fixtures / case["input"]))
    expected = np.load(fixtures / case["output"])
    with torch.no_grad():
        got = model(x).numpy()

    assert got.shape == tuple(case["output_shape"])
    err = float(np.abs(got - expected).max())
    tol = 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert err <= tol, f"max |ours - official| = {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("builder, eps", [("efficientvit_cls_l1", 1e-7), ("efficientvit_seg_b1", 1e-5)])
def test_build_model_sets_every_norm_eps_and_eval(builder: str, eps: float) -> None:
    kwargs = {"dataset": "cityscapes"} if "_seg_" in builder else {}
    with torch.device("meta"):
        model = build_model(builder, norm_eps=eps, **kwargs)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm))]
    assert norms and all(m.eps == eps for m in norms)
    assert not model.training
