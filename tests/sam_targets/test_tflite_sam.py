"""EfficientViT-SAM for TFLite (LiteRT): encoder and decoder both convert with litert-torch, static
(the card's sizes: one prompt of two points), and run in the LiteRT interpreter.

Default suite: the L0 fp32 bundle against PyTorch on the fixture photo. ``slow``: the fp16 encoder on
the fixture photo, and the int8 encoder against what int8 weights alone keep."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evit_deploy import api
from evit_deploy.artifact import open_artifact
from evit_deploy.targets.base import get_target

from .conftest import L0, SIZE
from .masks import (
    decoder_agreement,
    encoder_agreement,
    int8_against_weights,
    photo_input,
    prompts,
    torch_decode,
    torch_embeddings,
)

TFLITE = get_target("tflite")
pytestmark = pytest.mark.skipif(TFLITE.available() is not None, reason=f"tflite: {TFLITE.available()}")


def export(out: Path, weights: Path, precision: str, **kwargs: Any) -> dict[str, Path]:
    result = api.export(L0, target="tflite", precision=precision, weights=weights, out=out, **kwargs)
    return {graph: r.artifact for graph, r in result.graphs.items()}


@pytest.fixture(scope="module")
def l0_fp32(tmp_path_factory, sam_weights) -> dict[str, Path]:
    return export(tmp_path_factory.mktemp("sam-tflite"), sam_weights(L0), "fp32")


def manifest_of(artifact: Path) -> dict[str, Any]:
    return json.loads(artifact.with_name(artifact.name.removesuffix(".tflite") + ".evit.json").read_text())


def run_encoder(artifact: Path) -> Any:
    runner = open_artifact(artifact).runner(threads=2)  # loaded by ``with runner``
    return runner, lambda x: runner.run({"input_image": x})["image_embeddings"]


def run_decoder(artifact: Path) -> Any:
    runner = open_artifact(artifact).runner(threads=2)

    def decode(embeddings: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = runner.run({"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels})
        return out["masks"], out["iou_predictions"]

    return runner, decode


def test_both_graphs_convert_static_with_the_resizes_rewritten(l0_fp32):
    encoder, decoder = manifest_of(l0_fp32["encoder"]), manifest_of(l0_fp32["decoder"])
    assert encoder["details"]["bicubic_layers"] == 3  # the neck's resizes to 64x64: factors 4, 2 and 1 at 512
    assert "GATHER_ND" not in encoder["details"]["ops"] and encoder["details"]["ops"]["BATCH_MATMUL"] == 8
    assert [i["shape"] for i in decoder["inputs"]] == [[1, 64, 64, 256], [1, 2, 2], [1, 2]]  # NHWC embeddings
    assert [o["shape"] for o in decoder["outputs"]] == [[1, 256, 256, 4], [1, 4]]
    assert decoder["details"]["ops"]["SOFTMAX"] == 7


def test_fp32_matches_pytorch_on_the_fixture(l0_fp32, sam_model, reference_dir):
    model = sam_model(L0)
    fixtures = reference_dir / "fixtures" / "sam"
    x = np.load(fixtures / "efficientvit_sam_l0.encoder.input.npy")
    runner, encode = run_encoder(l0_fp32["encoder"])
    with runner:
        embeddings = encode(x)
    official = np.load(fixtures / "efficientvit_sam_l0.encoder.output.npy")
    rel = float(np.abs(embeddings - official).max() / np.abs(official).max())
    assert rel <= 1e-4
    runner, decode = run_decoder(l0_fp32["decoder"])
    with runner:
        (result,) = decoder_agreement(decode, model, [fixtures / "coffee.png"], SIZE[L0], rows=1)
    print(f"TFLite fp32: embeddings rel. error {rel:.2e} vs the official fixture; decoder {result}")
    assert result.min_iou >= 0.999 and result.best_agreement == 1.0 and result.iou_error < 1e-4


@pytest.mark.slow
def test_fp16_encoder_keeps_the_masks_on_the_fixture_photo(tmp_path, sam_weights, sam_model, sam_photos):
    """The encoder only, on the fixture photo: the fp16 decoder and two more photos passed here at
    aa097a9 and 66223a3, and were cut to keep make test inside 30 minutes (188 s, then 130 s of it)."""
    artifacts = export(tmp_path, sam_weights(L0), "fp16", graphs=["encoder"])
    runner, encode = run_encoder(artifacts["encoder"])
    with runner:
        results = encoder_agreement(encode, sam_model(L0), sam_photos[:1], SIZE[L0])
    assert min(r.min_iou for r in results) >= 0.99 and all(r.best_agreement == 1.0 for r in results)


@pytest.mark.slow
def test_int8_encoder_against_what_int8_weights_keep(tmp_path, sam_weights, sam_model, sam_photos, calib_photos):
    """int8 activations on top of int8 weights: the masks it keeps, beside the masks the PyTorch model
    with only its weights rounded to int8 keeps (verify's weight-rounded bound). Calibrated on photos
    none of the judged ones are (the fixture photo, coffee, is a calibration photo: left out). Four
    calibration images and one judged photo: seven and two passed at 66223a3 (144 s of make test)."""
    artifacts = export(tmp_path, sam_weights(L0), "int8", graphs=["encoder"], calib=calib_photos,
                       calib_samples=4)
    details = manifest_of(artifacts["encoder"])["details"]["int8"]["float_ops"]
    assert len(details["attention"]) == 5  # 4 LiteMLA cores + the LayerNorm (its DIV) stay float
    runner, encode = run_encoder(artifacts["encoder"])
    with runner:
        artifact_iou, bound_iou = int8_against_weights(encode, sam_model(L0), sam_photos[1:2], SIZE[L0])
    # int8 activations cost something beyond the weights, but the masks stay the same objects
    assert artifact_iou >= 0.8 and artifact_iou >= bound_iou - 0.15, (artifact_iou, bound_iou)
    print(f"int8 encoder: mean mask IoU {artifact_iou:.3f}; int8 weights alone {bound_iou:.3f}")


def test_decoder_embeddings_from_the_tflite_encoder(l0_fp32, sam_model, reference_dir):
    """The two artifacts chained as an app chains them (encoder output straight into the decoder)."""
    fixtures = reference_dir / "fixtures" / "sam"
    x, shape = photo_input(fixtures / "coffee.png", SIZE[L0])
    coords, labels = prompts(shape)
    runner, encode = run_encoder(l0_fp32["encoder"])
    with runner:
        embeddings = encode(x)
    runner, decode = run_decoder(l0_fp32["decoder"])
    with runner:
        masks = np.concatenate([decode(embeddings, coords[i:i + 1], labels[i:i + 1])[0] for i in range(4)])
    reference, _ = torch_decode(sam_model(L0), torch_embeddings(sam_model(L0), x), coords[:4], labels[:4])
    assert ((masks > 0) == (reference > 0)).mean() >= 0.999
