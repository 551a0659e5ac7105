"""EfficientViT-SAM exported and verified the way a user does it: ``evit export efficientvit-sam-l0
--target onnx`` writes the encoder, the decoder and the bundle; ``evit verify`` judges the embeddings
as tensors and the masks as a SAM user would (per-prompt mask IoU, IoU-prediction error, best-mask
agreement) on the fixture photo and ten other photos; the decoder's shapes, options and fixed-size
exports; and the whole chain (ONNX encoder -> ONNX decoder) against PyTorch end to end."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evit_deploy import api
from evit_deploy.bundle import load_bundle
from evit_deploy.data import list_images
from evit_deploy.errors import UsageError
from evit_deploy.manifest import load_manifest
from evit_deploy.nn.sam.graphs import unfriendly_ops
from evit_deploy.parity import BundleReport
from evit_deploy.report import junit_xml
from evit_deploy.sam import decoder_inputs, generated_prompts, postprocess_masks, preprocess, read_image
from evit_deploy.zoo import create_model

from .conftest import MODEL

onnx = pytest.importorskip("onnx", reason="pip install 'evit-deploy[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")

SHAPES = [(1, 1), (1, 4), (16, 1), (16, 4), (3, 5)]  # (prompts B, points N)


def _dims(value: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_export_writes_encoder_decoder_and_bundle(l0_bundle: Path) -> None:
    bundle, artifacts = load_bundle(l0_bundle)  # every graph complete, hashes as exported
    assert (bundle.model, bundle.task, bundle.target) == (MODEL, "sam", "onnx")
    assert {p.name for p in artifacts.values()} == {f"{MODEL}.encoder.onnx", f"{MODEL}.decoder.onnx"}
    encoder, decoder = load_manifest(artifacts["encoder"]), load_manifest(artifacts["decoder"])
    assert [(t.name, t.shape) for t in encoder.inputs] == [("input_image", (None, 3, 512, 512))]
    assert [(t.name, t.shape) for t in decoder.inputs] == [
        ("image_embeddings", (1, 256, 64, 64)), ("point_coords", (None, None, 2)), ("point_labels", (None, None))]
    assert [(t.name, t.shape) for t in decoder.outputs] == [("masks", (None, 4, 256, 256)),
                                                            ("iou_predictions", (None, 4))]
    assert encoder.input.extra["resize"] == "longest_side_pad" and decoder.recipe.dynamic


def test_the_decoder_parses_and_infers_at_every_prompt_batch(l0_bundle: Path, l0_weights: Path) -> None:
    """Checker and strict shape inference with (B, N) fixed at each size; no TensorRT-unfriendly op;
    ONNX Runtime equals the PyTorch decoder to 1e-4 relative at each size."""
    path = load_bundle(l0_bundle)[1]["decoder"]
    model = onnx.load(str(path))
    assert unfriendly_ops(model) == []
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = create_model(MODEL, l0_weights).graph("decoder")
    rng = np.random.default_rng(0)
    for prompts, points in SHAPES:
        fixed = copy.deepcopy(model)
        for value in fixed.graph.input:
            for dim in value.type.tensor_type.shape.dim:
                dim.dim_value = {"num_prompts": prompts, "num_points": points}.get(dim.dim_param, dim.dim_value)
        del fixed.graph.value_info[:]
        for value in fixed.graph.output:
            value.type.tensor_type.ClearField("shape")
        inferred = onnx.shape_inference.infer_shapes(fixed, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
        assert {v.name: _dims(v) for v in inferred.graph.output} == {"masks": [prompts, 4, 256, 256],
                                                                       "iou_predictions": [prompts, 4]}
        feed = {"image_embeddings": rng.standard_normal((1, 256, 64, 64)).astype(np.float32),
                "point_coords": (rng.random((prompts, points, 2)) * 1024).astype(np.float32),
                "point_labels": rng.integers(-1, 4, (prompts, points)).astype(np.float32)}
        got = session.run(None, feed)
        with torch.inference_mode():
            want = [t.numpy() for t in reference(*(torch.from_numpy(v) for v in feed.values()))]
        for g, w in zip(got, want):
            assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), (prompts, points)


@pytest.fixture(scope="module", params=["l0", pytest.param("xl0", marks=pytest.mark.slow)])
def exported(request: pytest.FixtureRequest, l0_bundle: Path, l0_weights: Path, seeded_checkpoint: Any,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(model, bundle, weights): L0 at 512 (fast); XL0 at 1024 (slow suite, exported once here)."""
    if request.param == "l0":
        return MODEL, l0_bundle, l0_weights
    weights = seeded_checkpoint("efficientvit_sam_xl0")
    result = api.export("efficientvit-sam-xl0", target="onnx", dynamic=True, weights=weights,
                        out=tmp_path_factory.mktemp("sam-xl0"))
    return "efficientvit-sam-xl0", result.artifact, weights


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_onnx_graphs_reproduce_the_official_fixtures(exported: tuple[str, Path, Path], sam_fixtures: Path) -> None:
    """The exported graphs on the fixtures' own inputs, against the official code's outputs: embeddings,
    and the decoder's masks and IoU for the point and the box prompt, within 1e-4 relative."""
    name, bundle, _ = exported
    entry = json.loads((sam_fixtures / "sam_index.json").read_text())[name]
    artifacts = load_bundle(bundle)[1]
    encoder = ort.InferenceSession(str(artifacts["encoder"]), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(artifacts["decoder"]), providers=["CPUExecutionProvider"])
    (embeddings,) = encoder.run(None, {"input_image": np.load(sam_fixtures / entry["encoder"]["input"])})
    official = np.load(sam_fixtures / entry["encoder"]["output"])
    assert _relative(embeddings, official) <= 1e-4
    for prompt in ("points", "box"):
        case = np.load(sam_fixtures / entry["decoder"][prompt]["file"])
        masks, scores = decoder.run(None, {"image_embeddings": official, "point_coords": case["point_coords"],
                                           "point_labels": case["point_labels"]})
        assert _relative(masks, case["masks"]) <= 1e-4 and _relative(scores, case["iou_predictions"]) <= 1e-4


@pytest.mark.slow  # two photos through both graphs and PyTorch for L0; XL0 at 1024 on the fixture photo
def test_verify_on_the_fixture_photo_and_others(exported: tuple[str, Path, Path], sam_photos: Path,
                                                tmp_path: Path) -> None:
    """ONNX fp32: embeddings and mask logits within 1e-4 relative of PyTorch; mask IoU >= 0.999 on the
    generated prompts (16 clicks + 4 boxes per photo), at 256x256 and on the photo. XL0 is judged on
    the fixture photo alone (its three-photo run, 70 s of make test, passed at a73bb4e), L0 on it and one
    other (three passed at 66223a3, 104 s)."""
    name, l0_bundle, _ = exported
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted(list_images(sam_photos), key=lambda p: p.name != "coffee.png")[: 2 if name == MODEL else 1]:
        shutil.copy(photo, photos / photo.name)
    count = len(list_images(photos))
    assert count == (2 if name == MODEL else 1) and (photos / "coffee.png").is_file()
    report = api.verify(l0_bundle, images=photos)
    assert isinstance(report, BundleReport) and report.passed, report.to_dict()["failed"]
    encoder, decoder = report.graphs["encoder"], report.graphs["decoder"]
    assert encoder.task == "tensor" and encoder.outputs["image_embeddings"].max_rel < 1e-4
    assert decoder.task == "sam-masks" and decoder.samples == count  # a dynamic decoder: all prompts in one run
    assert decoder.outputs["masks"].max_rel < 1e-4 and decoder.outputs["iou_predictions"].max_rel < 1e-4
    task = decoder.task_metrics
    assert task["mask_iou"] >= 0.999 and task["mask_iou_image"] >= 0.999 and task["mask_iou_worst"] >= 0.99
    assert task["best_mask_agreement"] == 1.0 and task["iou_prediction_error"] < 1e-4
    judged = {c.name: c for c in decoder.checks}
    assert judged["task.mask_iou"].threshold == 0.999 and judged["task.iou_prediction_error"].op == "<="
    xml = junit_xml(report)
    assert f'name="evit.verify.{name}.decoder"' in xml and 'name="task.mask_iou_image"' in xml
    recorded = load_manifest(load_bundle(l0_bundle)[1]["decoder"]).parity
    assert recorded is not None and recorded.passed and recorded.task["mask_iou"] == task["mask_iou"]


@pytest.mark.slow
def test_onnx_encoder_and_decoder_end_to_end_match_pytorch(l0_bundle: Path, l0_weights: Path,
                                                           sam_photos: Path) -> None:
    """The user's chain, no PyTorch in it: ONNX encoder -> ONNX decoder -> numpy postprocessing, against
    PyTorch's encoder and decoder on the same photo and prompts: IoU >= 0.999 per photo, every mask. L0
    only: XL0 at 1024 goes through the same chain once, in verify on the fixture photo. Two photos (the
    fixture's and one other; the third passed at 66223a3)."""
    name, bundle, weights = MODEL, l0_bundle, l0_weights
    artifacts = load_bundle(bundle)[1]
    encoder = ort.InferenceSession(str(artifacts["encoder"]), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(artifacts["decoder"]), providers=["CPUExecutionProvider"])
    model = create_model(name, weights)
    for path in sorted(list_images(sam_photos), key=lambda p: p.name != "coffee.png")[:2]:
        photo = read_image(path)
        size = photo.shape[:2]
        coords, labels = decoder_inputs(generated_prompts(size, seed=1), size)
        x = preprocess(photo, model.image_size)
        (embeddings,) = encoder.run(None, {"input_image": x})
        masks, scores = decoder.run(None, {"image_embeddings": embeddings, "point_coords": coords,
                                           "point_labels": labels})
        with torch.inference_mode():
            ref_masks, ref_scores = (t.numpy() for t in model.decode(
                model.image_encoder(torch.from_numpy(x)), torch.from_numpy(coords), torch.from_numpy(labels)))
        assert np.abs(scores - ref_scores).max() < 1e-3, path.name
        got, want = postprocess_masks(masks, size) > 0, postprocess_masks(ref_masks, size) > 0
        inter, union = (got & want).sum(axis=(2, 3)), (got | want).sum(axis=(2, 3))
        iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
        assert iou.min() >= 0.999, (path.name, float(iou.min()))


@pytest.fixture(scope="module")
def static_decoder(l0_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static-decoder")
    result = api.export(MODEL, target="onnx", weights=l0_weights, out=out, graphs="decoder")
    return result.graphs["decoder"].artifact


def _prompt_file(tmp_path: Path, prompts: list[dict[str, Any]]) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompts": prompts}))
    return path


def test_a_static_decoder_is_verified_prompt_by_prompt(static_decoder: Path, tmp_path: Path) -> None:
    """A static export takes one prompt of two points: verify cuts each image's prompts to that size
    (20 runs for 16 clicks and 4 boxes) and refuses a prompt with more points than it takes."""
    manifest = load_manifest(static_decoder)
    assert [t.shape for t in manifest.inputs] == [(1, 256, 64, 64), (1, 2, 2), (1, 2)]
    report = api.verify(static_decoder, samples=1)
    assert report.passed, report.to_dict()["failed"]
    assert report.samples == 20 and report.task_metrics["mask_iou"] >= 0.999
    three = _prompt_file(tmp_path, [{"points": [[10, 10], [20, 30]], "labels": [1, 0], "box": [5, 5, 50, 60]}])
    with pytest.raises(UsageError, match="a prompt has 4 points .* exported for 2 per prompt; re-export it with "
                                         "--dynamic"):
        api.verify(static_decoder, samples=1, prompts=three)


def test_verify_with_a_prompt_file(l0_bundle: Path, sam_photos: Path, tmp_path: Path, cli: Any) -> None:
    prompts = _prompt_file(tmp_path, [{"points": [[270, 200]]}, {"points": [[270, 200], [400, 120]],
                                                                  "labels": [1, 0]},
                                      {"box": [100, 80, 420, 360]}, {"points": [[250, 210]], "box": [100, 80, 420, 360]}])
    photo = tmp_path / "photo"
    photo.mkdir()
    (photo / "coffee.png").write_bytes((sam_photos / "coffee.png").read_bytes())
    decoder = load_bundle(l0_bundle)[1]["decoder"]
    done = cli("verify", decoder, "--images", photo, "--prompts", prompts, "--json", "-")
    assert done.code == 0, done
    data = json.loads(done.stdout)
    assert data["passed"] and data["samples"] == 1 and data["task"]["mask_iou"] >= 0.999
    assert data["tolerances"]["mask_iou"] == 0.999


@pytest.mark.parametrize(("content", "message"), [
    (None, "prompts.json: prompt file not found"),
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    ('{"prompts": [{"points": [[1, 2]], "labels": [7]}]}', "prompt 0: label 7 is not one of -1, 0, 1, 2, 3"),
    ('{"prompts": [{"box": [50, 50, 10, 10]}]}', "prompt 0: box (50, 50, 10, 10) has x1 < x0 or y1 < y0"),
    ('{"prompts": [{"points": [[9000, 10]]}]}', "prompt 0: point (9000, 10) is outside the 600x400 image"),
])
def test_bad_prompt_files_are_one_line_errors(l0_bundle: Path, sam_photos: Path, tmp_path: Path, cli: Any,
                                              content: str | None, message: str) -> None:
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content)
    photo = tmp_path / "photo"
    photo.mkdir()
    (photo / "coffee.png").write_bytes((sam_photos / "coffee.png").read_bytes())
    decoder = load_bundle(l0_bundle)[1]["decoder"]
    before = decoder.with_name(f"{MODEL}.decoder.evit.json").read_text()
    done = cli("verify", decoder, "--images", photo, "--prompts", path)
    assert done.code == 2 and len(done.error_lines) == 1 and message in done.error_lines[0], done
    assert "Traceback" not in done.stderr
    assert decoder.with_name(f"{MODEL}.decoder.evit.json").read_text() == before  # nothing recorded


@pytest.mark.parametrize("option", ["mask_input", "single_mask"])
def test_decoder_options_export_and_verify(l0_weights: Path, tmp_path: Path, option: str) -> None:
    result = api.export(MODEL, target="onnx", weights=l0_weights, out=tmp_path, graphs="decoder", dynamic=True,
                        options={option: True})
    path = result.graphs["decoder"].artifact
    manifest = load_manifest(path)
    assert manifest.recipe.model_options == {option: True}
    names = [t.name for t in manifest.inputs]
    if option == "mask_input":  # Meta's refinement inputs, which the official export lacks
        assert names[-2:] == ["mask_input", "has_mask_input"] and manifest.inputs[-2].shape == (None, 1, 256, 256)
    else:
        assert [t.shape for t in manifest.outputs] == [(None, 1, 256, 256), (None, 1)]
    report = api.verify(path, samples=1)
    assert report.passed, report.to_dict()["failed"]
    assert ("best_mask_agreement" in report.task_metrics) == (option == "mask_input")  # one token: nothing to pick


def test_fp16_decoder_is_judged_with_the_weight_rounded_bound(l0_weights: Path, tmp_path: Path) -> None:
    result = api.export(MODEL, target="onnx", precision="fp16", weights=l0_weights, out=tmp_path, graphs="decoder",
                        dynamic=True)
    report = api.verify(result.graphs["decoder"].artifact, samples=1)
    assert report.weight_rounding is not None
    assert set(report.weight_rounding) >= {"mask_iou", "mask_iou_image", "iou_prediction_error", "best_mask_agreement"}
    assert report.task_metrics["mask_iou"] >= 0.99 and report.passed, report.to_dict()["failed"]
    judged = {c.name: c for c in report.checks}
    assert judged["task.mask_iou"].threshold == 0.99
    assert judged["task.mask_iou"].weights_rounded == report.weight_rounding["mask_iou"]
