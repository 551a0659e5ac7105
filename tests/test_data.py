"""Issue 14 items 14 and 16: every image mode reads as its 8-bit RGB self, and ``.npy`` inputs.

A 16-bit PNG went through Pillow's ``convert("RGB")``, which clips at 255: 99.6% of its pixels
became white and calibration silently used white images.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evit_deploy.data import input_batches, load_image
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec

SEG = InputSpec(batch=1, height=64, width=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CLS = InputSpec(batch=1, height=64, width=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                extra={"crop_ratio": 0.95})
# one 8-bit step after normalisation (the smallest std): what "within rounding" allows
STEP = 1 / 255 / 0.224


@pytest.fixture(scope="module")
def grey(photo_folder) -> np.ndarray:
    """A real greyscale photo (skimage's camera), 8-bit."""
    return np.asarray(Image.open(photo_folder(("camera",)) / "camera.png").convert("L"))


@pytest.fixture(scope="module")
def colour(photo_folder) -> np.ndarray:
    return np.asarray(Image.open(photo_folder(("astronaut",)) / "astronaut.png").convert("RGB"))


@pytest.mark.parametrize("spec", [SEG, CLS], ids=["resize", "crop"])
def test_a_16bit_png_gives_the_tensor_of_its_8bit_version(tmp_path, grey, spec):
    eight, sixteen = tmp_path / "8.png", tmp_path / "16.png"
    Image.fromarray(grey).save(eight)
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen)  # the same picture, 16 bits a sample
    assert Image.open(sixteen).mode == "I;16"
    expected, got = load_image(eight, spec), load_image(sixteen, spec)
    assert np.abs(got - expected).max() <= STEP / 2, np.abs(got - expected).max()  # identical here, in fact


def test_a_full_range_16bit_png_is_scaled_not_clipped(tmp_path, grey):
    """Real 16-bit data (not v * 257): scaled by 255/65535, within one 8-bit step of the 8-bit rounding."""
    rng = np.random.default_rng(0)
    deep = np.clip(grey.astype(np.float64) * 257 + rng.integers(-128, 128, grey.shape), 0, 65535).astype(np.uint16)
    sixteen, eight = tmp_path / "16.png", tmp_path / "8.png"
    Image.fromarray(deep).save(sixteen)
    Image.fromarray(np.rint(deep / 257).astype(np.uint8)).save(eight)
    got = load_image(sixteen, SEG)
    assert np.abs(got - load_image(eight, SEG)).max() <= STEP / 2
    white = (np.array([1.0, 1.0, 1.0]) - np.array(SEG.mean)) / np.array(SEG.std)
    saturated = np.isclose(got, white[:, None, None], atol=1e-3).all(axis=0).mean()
    assert saturated < 0.05, f"{saturated:.1%} of pixels white"


def _modes(rgb: np.ndarray, grey: np.ndarray, folder: Path) -> dict[str, tuple[Path, Path]]:
    """mode -> (an image in that mode, the 8-bit RGB or L file it must read as)."""
    cases: dict[str, tuple[Image.Image, Image.Image]] = {}
    base_l, base_rgb = Image.fromarray(grey), Image.fromarray(rgb)
    alpha = Image.fromarray((np.arange(grey.size) % 256).astype(np.uint8).reshape(grey.shape))
    cases["LA"] = (Image.merge("LA", (base_l, alpha)), base_l)
    cases["RGBA"] = (Image.merge("RGBA", (*base_rgb.split(), alpha.resize(base_rgb.size))), base_rgb)
    palette = base_rgb.quantize(64)
    cases["P"] = (palette, palette.convert("RGB"))
    cases["1"] = (base_l.convert("1"), base_l.convert("1").convert("L"))
    cases["CMYK"] = (base_rgb.convert("CMYK"), base_rgb.convert("CMYK").convert("RGB"))
    cases["I"] = (Image.fromarray(grey.astype(np.int32) * 257), base_l)
    cases["F"] = (Image.fromarray(grey.astype(np.float32) / 255), base_l)
    big_endian = (grey.astype(np.uint16) * 257).astype(">u2")
    cases["I;16B"] = (Image.frombytes("I;16B", base_l.size, big_endian.tobytes()), base_l)
    files = {}
    for mode, (image, reference) in cases.items():
        suffix = ".tif" if mode in ("I", "F", "CMYK", "I;16B") else ".png"
        path, ref = folder / f"{mode.replace(';', '_')}{suffix}", folder / f"{mode.replace(';', '_')}-ref.png"
        image.save(path)
        reference.save(ref)
        files[mode] = (path, ref)
    return files


def test_every_mode_reads_as_its_8bit_self(tmp_path, colour, grey):
    small = np.ascontiguousarray(colour[::4, ::4])
    for mode, (path, reference) in _modes(small, np.ascontiguousarray(grey[::4, ::4]), tmp_path).items():
        got, expected = load_image(path, SEG), load_image(reference, SEG)
        assert np.abs(got - expected).max() <= STEP / 2, (mode, Image.open(path).mode, np.abs(got - expected).max())


@pytest.mark.parametrize("array,needle", [
    (np.full((8, 8), 2.5, np.float32), r"a floating-point image with values in \[2.5, 2.5\]"),
    (np.full((8, 8), np.nan, np.float32), "a floating-point image with values in"),
    (np.full((8, 8), 70000, np.int32), r"a 32-bit integer image with values in \[70000, 70000\], beyond 16 bits"),
])
def test_pixels_of_unknown_scale_are_refused(tmp_path, array, needle):
    path = tmp_path / "odd.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(UsageError, match=needle):
        load_image(path, SEG)


def test_16bit_calibration_folder_gives_the_batches_of_the_8bit_one(tmp_path, colour, grey):
    """What calibration and verify read (``input_batches``) from a folder of 16-bit PNGs."""
    eight, sixteen = tmp_path / "eight", tmp_path / "sixteen"
    eight.mkdir(), sixteen.mkdir()
    for i, picture in enumerate((grey, grey[::-1], grey[:, ::-1])):
        Image.fromarray(np.ascontiguousarray(picture)).save(eight / f"{i}.png")
        Image.fromarray(np.ascontiguousarray(picture).astype(np.uint16) * 257).save(sixteen / f"{i}.png")
    a = list(input_batches(SEG, samples=3, seed=0, source=eight))
    b = list(input_batches(SEG, samples=3, seed=0, source=sixteen))
    assert all(np.abs(x - y).max() <= STEP / 2 for x, y in zip(a, b))


def test_a_decompression_bomb_is_one_line(tmp_path, grey, monkeypatch):
    """Pillow raises DecompressionBombError (not an OSError) above twice MAX_IMAGE_PIXELS; lowered here
    so a small file stands in for a 100-gigapixel one."""
    path = tmp_path / "bomb.png"
    Image.fromarray(grey).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", grey.size // 4)
    with pytest.raises(UsageError, match="refused as a possible decompression bomb"):
        load_image(path, SEG)


# ----------------------------------------------------------------------------- .npy inputs (item 16)

def _normalised(rng: np.random.Generator, n: int, h: int = 64, w: int = 64) -> np.ndarray:
    pixels = rng.random((n, h, w, 3), dtype=np.float32)
    return ((pixels - np.array(SEG.mean, np.float32)) / np.array(SEG.std, np.float32)).transpose(0, 3, 1, 2)


def test_verify_images_takes_a_npy(tmp_path, small_onnx, copy_artifact, cli):
    """The issue's reproduction: ``verify --images good.npy`` said "not a folder"."""
    artifact = copy_artifact(small_onnx, tmp_path / "art")
    good = tmp_path / "good.npy"
    np.save(good, _normalised(np.random.default_rng(0), 3))
    result = cli("verify", artifact, "--images", good, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["samples"] == 3 and report["inputs"] == str(good) and report["passed"]


@pytest.mark.parametrize("content,needle", [
    (np.zeros((2, 3, 32, 32), np.float32),
     r"shape \(2, 3, 32, 32\) does not match the artifact's input N x \(3, 64, 64\); a \.npy input is N x 3 x H x W"),
    (np.zeros((0, 3, 64, 64), np.float32), r"shape \(0, 3, 64, 64\); a \.npy input is N x 3"),
    (np.zeros((64, 64), np.float32), r"shape \(64, 64\); a \.npy input is N x 3 x H x W"),
    (np.array(["a", "b"]), r"holds <U1 data, not numbers; a \.npy input is N x 3 x H x W"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), "input 0 holds NaN or Inf"),
    (b"not numpy", r"not a \.npy array"),
    (b"text", r"neither a folder of images nor a \.npy array \(N x 3 x H x W"),
], ids=["other-size", "empty", "2d", "strings", "nan", "garbage", "txt"])
def test_bad_npy_inputs_are_one_line(tmp_path, small_onnx, copy_artifact, cli, content, needle):
    artifact = copy_artifact(small_onnx, tmp_path / "art")
    path = tmp_path / ("in.txt" if needle.startswith("neither") else "in.npy")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    manifest = artifact.with_name(artifact.name.replace(".onnx", ".evit.json")).read_text()
    result = cli("verify", artifact, "--images", path)
    assert result.code == 2, result
    (line,) = result.error_lines
    assert re.search(needle, line), line
    assert artifact.with_name(artifact.name.replace(".onnx", ".evit.json")).read_text() == manifest
