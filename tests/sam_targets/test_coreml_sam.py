"""EfficientViT-SAM for Core ML: encoder and decoder both convert (torch.export -> ML program), static
at the card's sizes, and run here in evit's MIL interpreter (fp16 rounding honoured).

Default suite: the L0 fp32 bundle against PyTorch on the fixture photo. ``slow``: fp16 with the
LayerNorm island (and without it, on the fixture photo) and its masks on the photos."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evit_deploy import api
from evit_deploy.artifact import open_artifact

from .conftest import L0, SIZE
from .masks import decoder_agreement, encoder_agreement

pytest.importorskip("coremltools", reason="the Core ML target needs coremltools: pip install 'evit-deploy[coreml]'")


def export(out: Path, weights: Path, precision: str, **kwargs: Any) -> dict[str, Path]:
    result = api.export(L0, target="coreml", precision=precision, weights=weights, out=out, **kwargs)
    return {graph: r.artifact for graph, r in result.graphs.items()}


@pytest.fixture(scope="module")
def l0_fp32(tmp_path_factory, sam_weights) -> dict[str, Path]:
    return export(tmp_path_factory.mktemp("sam-coreml"), sam_weights(L0), "fp32")


def details_of(artifact: Path) -> dict[str, Any]:
    manifest = artifact.with_name(artifact.name.removesuffix(".mlpackage") + ".evit.json")
    return json.loads(manifest.read_text())["details"]


def encoder(artifact: Path) -> tuple[Any, Any]:
    runner = open_artifact(artifact).runner()
    return runner, lambda x: runner.run({"input_image": x})["image_embeddings"]


def decoder(artifact: Path) -> tuple[Any, Any]:
    runner = open_artifact(artifact).runner()

    def decode(embeddings: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = runner.run({"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels})
        return out["masks"], out["iou_predictions"]

    return runner, decode


def test_fp32_bundle_matches_pytorch_on_the_fixture(l0_fp32, sam_model, reference_dir):
    fixtures = reference_dir / "fixtures" / "sam"
    details = details_of(l0_fp32["encoder"])
    assert len(details["bicubic_rewrite"]) == 3 and "resize_bicubic" not in details["ops"]
    assert details_of(l0_fp32["decoder"])["ops"]["softmax"] == 7
    runner, encode = encoder(l0_fp32["encoder"])
    with runner:
        assert runner.describe()["backend"] in ("mil-interpreter", "coreml")
        embeddings = encode(np.load(fixtures / "efficientvit_sam_l0.encoder.input.npy"))
    official = np.load(fixtures / "efficientvit_sam_l0.encoder.output.npy")
    rel = float(np.abs(embeddings - official).max() / np.abs(official).max())
    assert rel <= 1e-4
    runner, decode = decoder(l0_fp32["decoder"])
    with runner:
        (result,) = decoder_agreement(decode, sam_model(L0), [fixtures / "coffee.png"], SIZE[L0], rows=1)
    print(f"Core ML fp32: embeddings rel. error {rel:.2e} vs the official fixture; decoder {result}")
    assert result.min_iou >= 0.999 and result.best_agreement == 1.0 and result.iou_error < 1e-4


@pytest.mark.slow
def test_fp16_keeps_layernorms_fp32_and_the_masks(tmp_path, sam_weights, sam_model, sam_photos):
    artifacts = export(tmp_path, sam_weights(L0), "fp16")
    enc, dec = details_of(artifacts["encoder"]), details_of(artifacts["decoder"])
    assert enc["compute_precision"]["islands"]["layernorm"]["fp16"] == 0
    assert enc["compute_precision"]["islands"]["layernorm"]["fp32"] >= 7  # LayerNorm2d's reductions, sqrt, div
    assert enc["compute_precision"]["islands"]["attention"]["fp16"] == 0
    assert dec["compute_precision"]["islands"]["layernorm"] == {"fp32": dec["fp32_islands"]["layernorm"], "fp16": 0}
    model = sam_model(L0)
    runner, encode = encoder(artifacts["encoder"])
    with runner:
        # the fixture photo: a second one took 30 s of make test through the MIL interpreter (it passed)
        results = encoder_agreement(encode, model, sam_photos[:1], SIZE[L0])
    assert min(r.min_iou for r in results) >= 0.99
    runner, decode = decoder(artifacts["decoder"])
    with runner:
        results = decoder_agreement(decode, model, sam_photos[:1], SIZE[L0], rows=1)
    assert min(r.min_iou for r in results) >= 0.99
