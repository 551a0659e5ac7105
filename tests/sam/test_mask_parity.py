"""verify's SAM metric on outputs made by hand: what each figure counts, and that a broken artifact fails."""
from __future__ import annotations

import numpy as np
import pytest

from evit_deploy.configs import DEFAULT_TOLERANCES, Tolerances
from evit_deploy.parity import Comparator
from evit_deploy.sam import decoder_batches, postprocess_masks
from evit_deploy.spec import Precision


def _outputs(rng: np.random.Generator, prompts: int = 3) -> dict[str, np.ndarray]:
    return {"masks": rng.standard_normal((prompts, 4, 256, 256)).astype(np.float32),
            "iou_predictions": np.array([[0.1, 0.9, 0.3, 0.2]] * prompts, dtype=np.float32)}


def test_identical_outputs_pass_with_every_figure_perfect() -> None:
    reference = _outputs(np.random.default_rng(0))
    comparator = Comparator("sam-masks", 0, DEFAULT_TOLERANCES[Precision.FP32])
    comparator.update({k: v.copy() for k, v in reference.items()}, reference, image_size=(300, 400))
    report = comparator.report(model="m", artifact="a.onnx", precision="fp32", input_source="x")
    assert report.passed
    assert report.task_metrics == {"mask_iou": 1.0, "mask_iou_worst": 1.0, "iou_prediction_error": 0.0,
                                   "mask_iou_image": 1.0, "best_mask_agreement": 1.0}
    assert {c.name for c in report.checks} >= {"task.mask_iou", "task.mask_iou_image", "task.iou_prediction_error",
                                               "task.best_mask_agreement"}


def test_each_figure_counts_what_it_says() -> None:
    rng = np.random.default_rng(1)
    reference = _outputs(rng)
    artifact = {k: v.copy() for k, v in reference.items()}
    ref_fg = reference["masks"][0, 2] > 0
    flip = np.argwhere(ref_fg)[: ref_fg.sum() // 10]  # 10% of prompt 0's token-2 foreground goes negative
    artifact["masks"][0, 2][tuple(flip.T)] = -1.0
    artifact["iou_predictions"][1] = [0.1, 0.3, 0.95, 0.2]  # prompt 1 now prefers token 2 (error 0.65)
    comparator = Comparator("sam-masks", 0, DEFAULT_TOLERANCES[Precision.FP32])
    comparator.update(artifact, reference, image_size=None)
    metrics = comparator.task_metrics()
    assert metrics["mask_iou_worst"] == pytest.approx(0.9, abs=1e-3)  # |A n R| / |A u R| = 0.9 |R| / |R|
    assert metrics["mask_iou"] == pytest.approx((11 + 0.9) / 12, abs=1e-4)
    assert metrics["iou_prediction_error"] == pytest.approx(0.65, abs=1e-6)
    assert metrics["best_mask_agreement"] == pytest.approx(2 / 3)
    assert "mask_iou_image" not in metrics  # no photo size: the upscaled masks are not judged
    failed = {c.name for c in comparator.report(model="m", artifact="a", precision="fp32", input_source="x").failures}
    assert failed >= {"task.mask_iou", "task.iou_prediction_error", "task.best_mask_agreement"}


def test_the_upscaled_mask_is_the_best_token_on_the_photo() -> None:
    """Logits near zero at 256x256 that keep their sign can still flip pixels once upscaled: the photo-size
    IoU judges the reference's best token after the official postprocessing."""
    rng = np.random.default_rng(2)
    reference = _outputs(rng, prompts=1)
    artifact = {k: v.copy() for k, v in reference.items()}
    artifact["masks"][0, 1] += 0.3  # the best token (1), shifted: a different mask on the photo
    comparator = Comparator("sam-masks", 0, Tolerances(mask_iou_image=0.999))
    comparator.update(artifact, reference, image_size=(200, 300))
    want = postprocess_masks(reference["masks"][0, 1], (200, 300)) > 0
    got = postprocess_masks(artifact["masks"][0, 1], (200, 300)) > 0
    expected = (got & want).sum() / (got | want).sum()
    assert comparator.task_metrics()["mask_iou_image"] == pytest.approx(expected)


def test_nan_logits_are_background_and_a_nan_score_is_an_infinite_error() -> None:
    reference = _outputs(np.random.default_rng(3), prompts=1)
    artifact = {k: np.full_like(v, np.nan) for k, v in reference.items()}
    comparator = Comparator("sam-masks", 0, DEFAULT_TOLERANCES[Precision.FP16])
    comparator.update(artifact, reference, image_size=(64, 64))
    report = comparator.report(model="m", artifact="a", precision="fp16", input_source="x")
    assert not report.passed and report.task_metrics["iou_prediction_error"] == float("inf")
    assert report.task_metrics["mask_iou"] == 0.0  # every reference mask has foreground; NaN has none


def test_decoder_batches_fit_fixed_sizes() -> None:
    coords = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    labels = np.array([[1, -1], [2, 3], [1, 0]], dtype=np.float32)
    arrays = {"point_coords": coords, "point_labels": labels, "has_mask_input": np.ones(3, np.float32)}
    (whole,) = decoder_batches(arrays, None, None)
    assert all(np.array_equal(whole[k], v) for k, v in arrays.items())
    padded = decoder_batches(arrays, 2, 4)  # two rows a run, four points a row
    assert [c["point_labels"].tolist() for c in padded] == [[[1, -1, -1, -1], [2, 3, -1, -1]],
                                                            [[1, 0, -1, -1], [1, 0, -1, -1]]]
    assert padded[0]["point_coords"].shape == (2, 4, 2) and not padded[0]["point_coords"][:, 2:].any()
