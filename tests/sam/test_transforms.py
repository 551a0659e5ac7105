"""SAM's numpy preprocessing and postprocessing equal the official (PyTorch) steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evit_deploy.errors import UsageError
from evit_deploy.sam import (
    boxes_to_frame,
    points_to_frame,
    postprocess_masks,
    preprocess,
    read_image,
    resize_bilinear,
    resize_longest_side,
    resized_shape,
    select_masks,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def coffee(reference_dir: Path) -> np.ndarray:
    return read_image(reference_dir / "fixtures" / "sam" / "coffee.png")


@pytest.mark.parametrize("model, size", [("l0", 512), ("xl0", 1024)])
def test_preprocess_is_bit_identical_to_the_official_input(
    reference_dir: Path, coffee: np.ndarray, model: str, size: int
) -> None:
    expected = np.load(reference_dir / "fixtures" / "sam" / f"efficientvit_sam_{model}.encoder.input.npy")
    got = preprocess(coffee, size)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_resized_shape_rounds_half_up() -> None:
    assert resized_shape(400, 600, 1024) == (683, 1024)  # 682.67 -> 683
    assert resized_shape(400, 600, 512) == (341, 512)  # 341.33 -> 341
    assert resized_shape(600, 400, 1024) == (1024, 683)
    assert resized_shape(3, 2, 5) == (5, 3)  # 3.33 -> 3
    assert resized_shape(2, 4, 3) == (2, 3)  # 1.5 -> 2: int(x + 0.5), not banker's rounding


def test_resize_keeps_an_image_already_at_size() -> None:
    image = np.random.default_rng(0).integers(0, 256, (300, 512, 3), dtype=np.uint8)
    assert resize_longest_side(image, 512) is image
    assert resize_longest_side(image, 256).shape == (150, 256, 3)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((3, 256, 256), (1024, 1024)),  # the mask upscale
        ((2, 683, 1024), (400, 600)),  # the crop back to the photo (downscale)
        ((1, 17, 31), (5, 64)),
        ((2, 1, 64, 80), (1000, 7)),
        ((4, 40, 40), (40, 40)),  # same size: a copy
    ],
)
def test_resize_bilinear_matches_torch(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 8
    t = torch.from_numpy(x)
    expected = F.interpolate(t if t.dim() == 4 else t[None], size=size, mode="bilinear", align_corners=False)
    expected = (expected if t.dim() == 4 else expected[0]).numpy()
    got = resize_bilinear(x, size)
    assert got.shape == expected.shape and got.dtype == np.float32
    # same taps and weights; the sums may round differently in the last bits
    assert float(np.abs(got - expected).max()) <= 4 * float(np.spacing(np.abs(expected).max()))


@pytest.mark.parametrize("size_in, size_out", [(683, 400), (1024, 600), (256, 1024), (7, 3)])
def test_resize_bilinear_samples_where_torch_does(size_in: int, size_out: int) -> None:
    """A ramp maps each output to its source coordinate: ours are torch's, also where the
    multiply-add is rounded once (torch's kernel is compiled with a fused multiply-add)."""
    ramp = np.broadcast_to(np.arange(size_in, dtype=np.float32), (2, size_in)).copy()
    expected = F.interpolate(
        torch.from_numpy(ramp)[None, None], size=(2, size_out), mode="bilinear", align_corners=False
    )[0, 0, 0].numpy()
    got = resize_bilinear(ramp, (2, size_out))[0]
    assert float(np.abs(got - expected).max()) <= float(np.spacing(np.float32(size_in)))


def test_postprocess_is_the_official_sequence() -> None:
    """Upscale to the 1024 frame, crop the padding, resize to the photo, as
    ``EfficientViTSam.postprocess_masks`` does with torch."""
    low_res = np.random.default_rng(2).standard_normal((3, 256, 256)).astype(np.float32) * 4
    t = F.interpolate(torch.from_numpy(low_res)[None], (1024, 1024), mode="bilinear", align_corners=False)
    t = F.interpolate(t[..., :683, :1024], (400, 600), mode="bilinear", align_corners=False)[0].numpy()
    got = postprocess_masks(low_res, (400, 600))
    assert got.shape == (3, 400, 600)
    assert float(np.abs(got - t).max()) <= 4 * float(np.spacing(np.abs(t).max()))


def test_prompts_move_to_the_1024_frame_per_axis() -> None:
    """Each axis scales by its rounded size ratio, as the official predictor does: on a 400x600
    photo x scales by 1024/600 and y by 683/400, not 1024/600."""
    got = points_to_frame(np.array([[270.0, 200.0], [600.0, 400.0]]), (400, 600))
    np.testing.assert_array_equal(
        got, np.array([[270 * 1024 / 600, 200 * 683 / 400], [1024, 683]], np.float32)
    )
    box = boxes_to_frame(np.array([30.0, 40.0, 300.0, 200.0]), (400, 600))
    np.testing.assert_array_equal(
        box, points_to_frame(np.array([[30.0, 40.0], [300.0, 200.0]]), (400, 600)).ravel()
    )
    # the same frame for every model: a 512-input L model's prompts are 1024-frame too
    assert points_to_frame(np.array([[100.0, 50.0]]), (512, 512)).tolist() == [[200.0, 100.0]]


def test_select_masks_follows_the_predictor() -> None:
    masks = np.arange(2 * 4 * 2 * 2, dtype=np.float32).reshape(2, 4, 2, 2)
    scores = np.arange(8, dtype=np.float32).reshape(2, 4)
    multi, multi_scores = select_masks(masks, scores, multimask=True)
    single, single_scores = select_masks(masks, scores, multimask=False)
    np.testing.assert_array_equal(multi, masks[:, 1:])
    np.testing.assert_array_equal(multi_scores, scores[:, 1:])
    np.testing.assert_array_equal(single, masks[:, :1])
    np.testing.assert_array_equal(single_scores, scores[:, :1])


def test_read_image_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="image not found") as missing:
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(UsageError, match="is not an image PIL can read") as text:
        read_image(tmp_path / "notes.txt")
    for err in (missing, text):
        assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_preprocess_refuses_what_is_not_an_rgb_image() -> None:
    with pytest.raises(UsageError, match="H x W x 3 uint8"):
        preprocess(np.zeros((32, 32), np.uint8), 512)
    with pytest.raises(UsageError, match="H x W x 3 uint8"):
        preprocess(np.zeros((32, 32, 3), np.float32), 512)


def test_the_numpy_side_does_not_import_torch() -> None:
    """``evit segment`` runs exported graphs where PyTorch is not installed."""
    code = "import sys, evit_deploy.sam; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
