"""Input sources for verify, calibration and profiling: seeded random images, image
folders preprocessed as the model card says, and ``.npy`` tensors.

Random inputs are random *pixels* pushed through the card's normalisation, not unit
Gaussians: they stay in the value range the real preprocessing produces, which matters
for fp16 and int8 parity.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def normalise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxWx3 floats in [0, 1] -> 3xHxW, normalised with the card's mean/std."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels.astype(np.float32) - mean) / std).transpose(2, 0, 1))


def random_batch(spec: InputSpec, seed: int, index: int = 0) -> np.ndarray:
    """One reproducible NCHW batch of random pixels, normalised."""
    rng = np.random.default_rng([seed, index])
    pixels = rng.random((spec.batch, spec.height, spec.width, 3), dtype=np.float32)
    return np.stack([normalise(p, spec) for p in pixels])


def list_images(folder: Path, minimum: int = 1) -> list[Path]:
    """Image files of a folder (sorted), refusing an empty folder or one with other files."""
    if not folder.exists():
        raise UsageError(f"{folder}: no such folder; pass a folder of images")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder; pass a folder of images (jpg, png, ...)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise UsageError(
            f"{folder}: {others[0]!r} is not an image ({len(others)} non-image file(s)); "
            "keep only images (jpg, png, bmp, webp, tif) in the folder"
        )
    if not files:
        raise UsageError(f"{folder}: the folder holds no images; add jpg/png files or drop the option")
    if len(files) < minimum:
        raise UsageError(f"{folder}: {len(files)} image(s) but {minimum} are needed; add images or ask for fewer")
    return files


def load_image(path: Path, spec: InputSpec) -> np.ndarray:
    """One image, preprocessed as the model card says, as a 3xHxW float32 array.

    Classification: resize the shorter side to ceil(size / crop_ratio) (bicubic), centre
    crop, as the official eval script does. Segmentation: resize to the input size
    (bicubic), as the official demo does. Any Pillow mode is read (16-bit and float images
    through ``eight_bit``, palette, alpha, CMYK through Pillow's own conversion). SAM
    (``longest_side_pad``): what the official predictor feeds its encoder
    (``evit_deploy.sam.preprocess``: long side to the input size, normalised in 0..255 terms,
    zero padded bottom/right), bit for bit.
    """
    from PIL import Image, UnidentifiedImageError

    if spec.extra.get("resize") == "longest_side_pad":
        from evit_deploy.sam import preprocess, read_image

        if spec.height != spec.width:
            raise UsageError(f"SAM's preprocessing pads to a square; {spec.height}x{spec.width} is not one")
        return preprocess(read_image(path), spec.height)[0]
    try:
        with Image.open(path) as image:
            image = _to_color(eight_bit(image, path), spec.color, path)
            crop_ratio = spec.extra.get("crop_ratio")
            if crop_ratio:
                target = math.ceil(max(spec.height, spec.width) / crop_ratio)
                scale = target / min(image.size)
                size = (max(spec.width, round(image.width * scale)), max(spec.height, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.BICUBIC)
                left, top = (image.width - spec.width) // 2, (image.height - spec.height) // 2
                image = image.crop((left, top, left + spec.width, top + spec.height))
            else:
                image = image.resize((spec.width, spec.height), Image.Resampling.BICUBIC)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{path}: cannot be read as an image ({err.__class__.__name__}); remove or replace it") from None
    except Image.DecompressionBombError as err:
        raise UsageError(f"{path}: refused as a possible decompression bomb ({err}); use a smaller image") from None
    return normalise(pixels, spec)


def image_sizes(spec: InputSpec, *, samples: int, source: Path | None = None) -> list[tuple[int, int]]:
    """(h, w) of the photo behind the first image of each of ``input_batches``' batches, before any
    resizing: SAM's prompts are given in the photo's pixels. Random and ``.npy`` inputs are
    already the input size."""
    if source is None or source.suffix == ".npy":
        return [(spec.height, spec.width)] * samples
    from PIL import Image

    files = list_images(source)
    sizes = []
    for index in range(samples):
        path = files[(index * spec.batch) % len(files)]
        try:
            with Image.open(path) as image:
                sizes.append((image.height, image.width))
        except OSError as err:
            raise UsageError(f"{path}: cannot be read as an image ({err.__class__.__name__}); "
                             "remove or replace it") from None
    return sizes


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def eight_bit(image: Any, path: Path) -> Any:
    """16-bit, 32-bit integer and float greyscale images as 8-bit ``L``; other modes unchanged.

    Pillow's ``convert("RGB")`` clips these modes at 255 instead of scaling them, so a 16-bit
    PNG came out almost all white (issue 14 item 14). The model's preprocessing is defined on
    8-bit pixels: 16-bit values are scaled by 255/65535 (a 16-bit copy of an 8-bit image, v * 257,
    gives back exactly v), floats in [0, 1] by 255. Values outside those ranges have no known
    scale and are refused."""
    from PIL import Image

    if image.mode not in SIXTEEN_BIT_MODES | {"I", "F"}:
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise UsageError(f"{path}: a floating-point image with values in [{low:g}, {high:g}]; evit reads float "
                             "images in [0, 1] only: save it as an 8- or 16-bit PNG")
        scale = 255.0
    else:
        if low < 0 or high > 65535:
            raise UsageError(f"{path}: a 32-bit integer image with values in [{low:g}, {high:g}], beyond 16 bits; "
                             "save it as an 8- or 16-bit PNG")
        scale = 255.0 / 65535.0
    return Image.fromarray(np.rint(values * scale).astype(np.uint8))


def _to_color(image: Any, color: str, path: Path) -> Any:
    try:
        return image.convert(color)
    except ValueError as err:
        raise UsageError(f"{path}: its {image.mode} pixels cannot be converted to {color} ({err}); "
                         "save it as an RGB or greyscale PNG or JPEG") from None


def image_batches(folder: Path, spec: InputSpec, samples: int) -> Iterator[np.ndarray]:
    """``samples`` batches from a folder's images, cycling if the folder is smaller."""
    files = list_images(folder)
    for index in range(samples):
        batch = [load_image(files[(index * spec.batch + b) % len(files)], spec) for b in range(spec.batch)]
        yield np.stack(batch)


NPY_SHAPE = "N x 3 x H x W (or 3 x H x W) floats, already preprocessed (normalised) for the model"


def _open_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` input, memory-mapped (a large file is not read whole), as NCHW."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a .npy array ({str(err).splitlines()[0] if str(err) else err}); "
                         "save inputs with numpy.save") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise UsageError(f"{path}: holds {getattr(array, 'dtype', type(array).__name__)} data, not numbers; "
                         f"a .npy input is {NPY_SHAPE}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise UsageError(f"{path}: shape {tuple(array.shape)}; a .npy input is {NPY_SHAPE}")
    return array


def count_inputs(source: Path) -> int:
    """How many distinct inputs a source holds: a folder's images, or N of a ``.npy`` (what verify
    compares by default)."""
    return len(_open_npy(source)) if is_npy(source) else len(_input_folder(source))


def _input_folder(source: Path) -> list[Path]:
    """The images of an input folder; a file that is not ``.npy`` is told both forms inputs take."""
    if source.is_file():
        raise UsageError(f"{source}: neither a folder of images nor a .npy array ({NPY_SHAPE})")
    return list_images(source)


def is_npy(source: Path) -> bool:
    return source.suffix.lower() == ".npy"


def npy_batches(path: Path, spec: InputSpec, samples: int) -> Iterator[np.ndarray]:
    """Batches from a saved NCHW (or CHW) float array, e.g. a real preprocessed frame."""
    array = _open_npy(path)
    expected = (3, spec.height, spec.width)
    if tuple(array.shape[1:]) != expected:
        raise UsageError(f"{path}: shape {tuple(array.shape)} does not match the artifact's input N x {expected}; "
                         f"a .npy input is {NPY_SHAPE}")
    return _npy_rows(path, array, spec, samples)


def _npy_rows(path: Path, array: np.ndarray, spec: InputSpec, samples: int) -> Iterator[np.ndarray]:
    for index in range(samples):
        rows = [(index * spec.batch + b) % len(array) for b in range(spec.batch)]
        batch = np.asarray(array[rows], dtype=np.float32)
        if not np.isfinite(batch).all():
            bad = next(r for r in rows if not np.isfinite(np.asarray(array[r], dtype=np.float32)).all())
            raise UsageError(f"{path}: input {bad} holds NaN or Inf; every input must be finite")
        yield batch


def input_batches(spec: InputSpec, *, samples: int, seed: int, source: Path | None = None) -> Iterator[np.ndarray]:
    """The one place verify, calibration and profiling get their inputs from."""
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    if source is None:
        return (random_batch(spec, seed, i) for i in range(samples))
    if is_npy(source):
        return npy_batches(source, spec, samples)
    _input_folder(source)  # fail early, before any work, on a bad folder
    return image_batches(source, spec, samples)


@dataclass(frozen=True)
class CalibrationImages:
    """Calibration inputs read from disk one image at a time, as often as they are iterated.

    Calibrators pass over the images once or twice; holding them all (64 photos at 1024x2048
    are 1.6 GB of float32) is what they must not do (issue 14)."""

    source: Path
    spec: InputSpec  # batch 1
    samples: int

    def __iter__(self) -> Iterator[np.ndarray]:
        return input_batches(self.spec, samples=self.samples, seed=0, source=self.source)

    def __len__(self) -> int:
        return self.samples
