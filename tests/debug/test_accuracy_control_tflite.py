"""``evit export --target tflite --precision int8 --min-agreement A``: layers kept float until A is met.

Seeded seg-B0 at 64x128 on the calibration photos (7 images: 5 give the ranges, 2 are held
out for agreement); the agreement is re-measured here with LiteRT and PyTorch, independently
of the export's own measurement.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from .conftest import RESOLUTION, SEG, conv_macs

TARGET = 0.97


@pytest.fixture(scope="module")
def controlled(tmp_path_factory, seg_weights, calib_photos):
    from evit_deploy import api

    out = tmp_path_factory.mktemp("controlled")
    return api.export(SEG, target="tflite", precision="int8", weights=seg_weights, out=out, resolution=RESOLUTION,
                      calib=calib_photos, calib_samples=7, options={"min_agreement": TARGET, "max_float_share": 1.0})


def _held_out_agreement(artifact, weights, calib_photos) -> float:
    """Pixel agreement of the artifact with PyTorch on the images the export held out."""
    import torch

    from evit_deploy import zoo
    from evit_deploy.accuracy_control import split_holdout
    from evit_deploy.artifact import open_artifact
    from evit_deploy.data import input_batches

    handle = open_artifact(artifact)
    images = list(input_batches(handle.spec, samples=7, seed=0, source=calib_photos))
    _, held = split_holdout(images, 0.25)
    model = zoo.create_model(SEG, weights).eval()
    agree = total = 0
    with handle.runner() as runner:
        for image in held:
            with torch.inference_mode():
                expected = model(torch.from_numpy(image)).numpy().argmax(axis=1)
            got = runner.run({handle.spec.name: image})["logits"].argmax(axis=1)
            agree, total = agree + int(np.sum(got == expected)), total + expected.size
    return agree / total


def test_the_agreement_target_is_met_with_the_worst_layers_float(controlled, seg_weights, calib_photos):
    control = controlled.manifest.details["int8"]["accuracy_control"]
    assert control["met"] and control["target"] == TARGET
    assert control["plain_int8_agreement"] < TARGET <= control["agreement"]
    kept = control["kept_float"]
    order = [row["layer"] for row in control["ranking"]]
    # every quantised op is named by PyTorch module path: the module whose output it makes, or,
    # for an op no module ends at (the head adding its inputs, bicubic upsampling's convs), the module
    # it runs in
    assert kept and all(re.match(r"(backbone|head)[.:]", name) for name in order), order
    inside = [name for name in order if ": " in name]
    assert inside and all(re.fullmatch(r"(backbone|head)[\w.]*: [A-Z_0-9]+ op \d+", name) for name in inside), inside
    assert kept == sorted(kept, key=order.index)  # worst first, as ranked
    drops = [step for step in control["steps"] if "dropped" in step]
    assert len(control["steps"]) - len(drops) < 12  # bisection: a handful of prefixes, not one per layer
    assert len(drops) < len(control["ranking"])  # then a try without each layer of the prefix that met
    assert [step["chosen"] for step in control["steps"]].count(True) == 1
    assert any(f"{len(kept)} layer(s) float" in note for note in controlled.manifest.notes)
    # a layer's cost is the multiply-adds of the ops that go float with it: a backbone projection
    # conv's own (BatchNorm folded in), as PyTorch's shapes count them, and those of its readers:
    # one per element for a residual ADD, the next block's conv for the projection that ends a
    # stage's first block
    macs, costs = conv_macs(seg_weights), {row["layer"]: row["cost"] for row in control["ranking"]}
    convs = {path: macs[f"{path}.conv"] for path in costs
             if path.startswith("backbone.") and path.endswith("point_conv") and f"{path}.conv" in macs}
    residual = [name for name in convs if re.search(r"op_list\.[1-9]", name)]
    assert residual and len(residual) < len(convs)
    assert all(costs[name] >= own for name, own in convs.items())
    assert all(costs[name] <= convs[name] * (1 + 2 / 16) for name in residual)  # 16+ input channels
    # the number recorded is what the artifact computes, measured again here
    assert _held_out_agreement(controlled.artifact, seg_weights, calib_photos) == pytest.approx(
        control["agreement"], abs=1e-6)
