"""Full-resolution agreement and the L series (slow: big exports and big weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evit_deploy.graph import compute_dtypes, find_fp32_islands, to_full_fp16, to_mixed_fp16

from .conftest import inputs, litemla_count, ort_run, torch_run
from .test_fp16 import check_valid
from .test_islands import check_islands

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("height, width", [(512, 1024), (1024, 2048)])
def test_seg_b1_mixed_fp16_pixel_agreement_full_resolution(exports, height, width):
    model, graph = exports.model("efficientvit_seg_b1"), exports.graph("efficientvit_seg_b1", height, width)
    mixed = to_mixed_fp16(graph)
    x = inputs(height, width, 1)[0]
    ref = torch_run(model, x)
    out = ort_run(mixed, x)
    assert np.isfinite(out).all()
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.999
    assert not np.isfinite(ort_run(to_full_fp16(graph), x)).all()


@pytest.mark.parametrize("builder, height, width", [("efficientvit_seg_l1", 128, 256),
                                                    ("efficientvit_cls_l1", 224, 224)])
def test_l_series(exports, builder, height, width):
    model, graph = exports.model(builder), exports.graph(builder, height, width)
    islands = find_fp32_islands(graph)
    check_islands(graph, islands, litemla_count(model),
                  expected_layernorm=sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()))
    mixed = to_mixed_fp16(graph, islands)
    check_valid(mixed)
    dtypes = compute_dtypes(mixed)
    in_island = {n for i in islands for n in i.nodes}
    assert all(dtypes[n] == "fp32" for n in in_island)
    assert {d for n, d in dtypes.items() if n not in in_island} <= {"fp16", "cast", None}
    x = inputs(height, width, 1)[0]
    ref, out = torch_run(model, x), ort_run(mixed, x)
    assert np.isfinite(out).all()
    if "_seg_" in builder:
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.1
        assert ((ref.argmax(1) == out.argmax(1))[clear]).mean() >= 0.999
    else:
        assert ref.argmax() == out.argmax()
