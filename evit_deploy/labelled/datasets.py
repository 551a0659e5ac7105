"""Labelled data on disk -> a list of (image, label) samples, checked before any inference runs.

Layouts (``--format``; detected when not given):

* ``cityscapes``: ``leftImg8bit/val/CITY/*_leftImg8bit.png`` + ``gtFine/val/CITY/*_gtFine_labelIds.png``;
  labelIds become the 19 train ids (``cityscapes_labels``), every other id is ignored.
* ``ade20k``: ``images/validation/*.jpg`` + ``annotations/validation/*.png`` (ADEChallengeData2016):
  150 classes, annotation value ``v`` is class ``v - 1``, 0 is ignored.
* ``masks``: ``images/NAME.ext`` + ``labels/NAME.png`` (or ``masks/``) of class ids, and a
  ``classes.yaml`` (``classes: [...]``, ``ignore_index: 255``) in the folder or given by ``--classes``.
* ``imagefolder`` (classification): ``CLASS/xxx.jpg``; folder names are the card's class names,
  or an index file (``--classes``) maps them to class indices.

Only paths are held; label images are decoded one at a time (``read_labels``). Everything that
can be checked from file names and image headers (missing labels, sizes, unknown folders) is
checked when the dataset is opened, so bad data fails in seconds, not after an hour of inference.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evit_deploy.data import IMAGE_SUFFIXES
from evit_deploy.errors import UsageError
from evit_deploy.labelled import cityscapes_labels

FORMATS = ("cityscapes", "ade20k", "masks", "imagefolder")
TASK_OF = {"cityscapes": "segmentation", "ade20k": "segmentation", "masks": "segmentation",
           "imagefolder": "classification"}
IGNORED = -1  # a label-lookup value: the pixel is not scored
INVALID = -2  # a label-lookup value: the pixel value is not a label of this layout
ADE20K_CLASSES = 150
LABEL_FOLDERS = ("labels", "masks")
CLASSES_FILES = ("classes.yaml", "classes.yml")
MAX_LABEL_VALUE = 65535


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | int  # a label image (segmentation) or a class index (classification)


@dataclass
class Dataset:
    """A checked list of samples and how to read their labels."""

    format: str
    root: Path
    classes: list[str]
    samples: list[Sample]
    lookup: np.ndarray | None = None  # raw label value -> class id, IGNORED or INVALID (segmentation)
    label_range: str = ""  # what a valid raw value is, for error messages
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return TASK_OF[self.format]

    def read_labels(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(class ids, valid mask) of a sample's label image; a value outside the layout is exit 2."""
        assert isinstance(sample.label, Path) and self.lookup is not None
        raw = _label_pixels(sample.label)
        outside = raw >= len(self.lookup)
        ids = self.lookup[np.where(outside, 0, raw)]
        bad = outside | (ids == INVALID)
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise UsageError(f"{sample.label}: class id {int(raw[row, col])} at row {row}, column {col} is out of "
                             f"range: {self.label_range}")
        return ids, ids >= 0


def _label_pixels(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise UsageError(f"{path}: a {image.mode} image; labels must be single-channel PNGs of class ids "
                                 "(not colour-coded)")
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{path}: cannot be read as a label image ({err.__class__.__name__})") from None
    return pixels.astype(np.int64)


def _size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{path}: cannot be read as an image ({err.__class__.__name__}); remove or replace it") \
            from None


def _check_sizes(samples: list[Sample]) -> None:
    for sample in samples:
        assert isinstance(sample.label, Path)
        image, label = _size(sample.image), _size(sample.label)
        if image != label:
            raise UsageError(f"{sample.label}: labels are {label[0]}x{label[1]} but the image {sample.image.name} is "
                             f"{image[0]}x{image[1]}; a label image must have its image's size")


def _folder(root: Path, relative: str, what: str, layout: str) -> Path:
    folder = root / relative
    if not folder.is_dir():
        raise UsageError(f"{root}: not in the {layout} layout: {relative}/ is missing ({what})")
    return folder


def _images_under(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    allowed = suffixes or IMAGE_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in allowed
                  and not p.name.startswith("."))


def _paired(images: list[Path], label_of: Callable[[Path], Path], root: Path) -> list[Sample]:
    samples = []
    for image in images:
        label = label_of(image)
        if not label.is_file():
            raise UsageError(f"{label} is missing (the labels of {image.relative_to(root)})")
        samples.append(Sample(image, label))
    return samples


def _limited(samples: list[Sample], limit: int | None, root: Path) -> list[Sample]:
    if not samples:
        raise UsageError(f"{root}: no labelled images found")
    return samples[:limit] if limit else samples


def _lookup(size: int, mapping: dict[int, int]) -> np.ndarray:
    table = np.full(size, INVALID, dtype=np.int64)
    for value, class_id in mapping.items():
        table[value] = class_id
    return table


# ------------------------------------------------------------------------------------- layouts


def open_cityscapes(root: Path, limit: int | None) -> Dataset:
    if root.name == "val" and root.parent.name == "leftImg8bit":  # the official script's --path
        root = root.parent.parent
    images_dir = _folder(root, "leftImg8bit/val", "the images: leftImg8bit/val/CITY/*_leftImg8bit.png", "cityscapes")
    _folder(root, "gtFine/val", "the labels: gtFine/val/CITY/*_gtFine_labelIds.png", "cityscapes")
    images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise UsageError(f"{images_dir}: no CITY/*_leftImg8bit.png images")

    def label_of(image: Path) -> Path:
        stem = image.name.removesuffix("_leftImg8bit.png")
        return root / "gtFine" / "val" / image.parent.name / f"{stem}_gtFine_labelIds.png"

    samples = _limited(_paired(images, label_of, root), limit, root)
    _check_sizes(samples)
    table = cityscapes_labels.train_id_table()
    lookup = np.where(table == cityscapes_labels.IGNORE, IGNORED, np.where(table < 0, INVALID, table))
    return Dataset("cityscapes", root, list(cityscapes_labels.TRAIN_CLASSES), samples, lookup,
                   f"Cityscapes labelIds are 0-{cityscapes_labels.MAX_ID} (use *_gtFine_labelIds.png, "
                   "not labelTrainIds or color images)")


def open_ade20k(root: Path, limit: int | None, classes: list[str]) -> Dataset:
    if root.name == "validation" and root.parent.name == "images":  # the official script's --path
        root = root.parent.parent
    images_dir = _folder(root, "images/validation", "the images: images/validation/*.jpg", "ade20k")
    labels_dir = _folder(root, "annotations/validation", "the labels: annotations/validation/*.png", "ade20k")
    images = _images_under(images_dir, {".jpg"})
    if not images:
        raise UsageError(f"{images_dir}: no .jpg images")

    def label_of(image: Path) -> Path:
        return (labels_dir / image.relative_to(images_dir)).with_suffix(".png")

    samples = _limited(_paired(images, label_of, root), limit, root)
    _check_sizes(samples)
    lookup = _lookup(256, {0: IGNORED, **{v: v - 1 for v in range(1, ADE20K_CLASSES + 1)}})
    return Dataset("ade20k", root, classes, samples, lookup,
                   f"ADE20K annotations hold 0 (ignored) and 1-{ADE20K_CLASSES}")


def open_masks(root: Path, limit: int | None, classes_file: Path | None, num_classes: int) -> Dataset:
    images_dir = _folder(root, "images", "images/NAME.jpg|png beside labels/NAME.png", "masks")
    labels_dir = next((root / name for name in LABEL_FOLDERS if (root / name).is_dir()), None)
    if labels_dir is None:
        raise UsageError(f"{root}: not in the masks layout: labels/ (or masks/) is missing (labels/NAME.png of "
                         "class ids beside images/NAME.jpg)")
    names, ignore = _masks_classes(root, classes_file, num_classes)
    images = _images_under(images_dir)
    if not images:
        raise UsageError(f"{images_dir}: no images")

    def label_of(image: Path) -> Path:
        return (labels_dir / image.relative_to(images_dir)).with_suffix(".png")

    samples = _limited(_paired(images, label_of, root), limit, root)
    _check_sizes(samples)
    lookup = _lookup(max(num_classes, ignore + 1), {**{c: c for c in range(num_classes)}, ignore: IGNORED})
    return Dataset("masks", root, names, samples, lookup,
                   f"{num_classes} classes (0-{num_classes - 1}), ignore index {ignore}")


def _masks_classes(root: Path, classes_file: Path | None, num_classes: int) -> tuple[list[str], int]:
    path = classes_file or next((root / n for n in CLASSES_FILES if (root / n).is_file()), None)
    if path is None:
        raise UsageError(f"{root}: not in the masks layout: classes.yaml is missing (classes: [names...], "
                         "ignore_index: 255), or pass --classes FILE")
    data = _read_mapping(path)
    names = data.get("classes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise UsageError(f"{path}: 'classes' must be a list of class names (index = class id)")
    ignore = data.get("ignore_index", 255)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or ignore < 0:
        raise UsageError(f"{path}: ignore_index must be a non-negative integer, got {ignore!r}")
    if ignore > MAX_LABEL_VALUE:
        raise UsageError(f"{path}: ignore_index {ignore} does not fit a 16-bit label PNG (at most {MAX_LABEL_VALUE})")
    if ignore < len(names):
        raise UsageError(f"{path}: ignore_index {ignore} is also class {names[ignore]!r}; pick a value >= "
                         f"{len(names)} (e.g. 255)")
    unknown = sorted(set(data) - {"classes", "ignore_index"})
    if unknown:
        raise UsageError(f"{path}: unknown field {unknown[0]!r} (fields: classes, ignore_index)")
    if len(names) != num_classes:
        raise UsageError(f"{path}: names {len(names)} classes but the model predicts {num_classes}")
    return names, ignore


def _read_mapping(path: Path) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UsageError(f"{path}: cannot read it: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


_SYNSET = re.compile(r"^n\d{8}$")


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


def open_imagefolder(root: Path, limit: int | None, classes: list[str], index_file: Path | None) -> Dataset:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"{root}: not in the imagefolder layout: no class folders (CLASS/image.jpg)")
    notes: list[str] = []
    if index_file is not None:
        index = _index_file(index_file, len(classes))
        source = f"in {index_file.name}"
    elif all(_SYNSET.match(f.name) for f in folders) and len(folders) == len(classes):
        index = {f.name: i for i, f in enumerate(folders)}
        source = ""
        notes.append("class indices from the sorted folder names (torchvision ImageFolder order, as the official eval)")
    else:
        index, source = _index_by_name(folders, classes), "among the model's class names"
    unknown = [f.name for f in folders if f.name not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        hint = ("ImageNet synset folders need an index file for a subset: pass --classes imagenet_class_index.json"
                if _SYNSET.match(unknown[0]) else "rename the folders or pass --classes INDEX_FILE")
        raise UsageError(f"{root}: unknown class folder(s) {shown}: not {source or 'known'}; {hint}")
    per_class = []
    for folder in folders:
        images = _images_under(folder)
        if not images:
            raise UsageError(f"{folder}: a class folder without images")
        per_class.append([Sample(image, index[folder.name]) for image in images])
    # one image of every class in turn, so that --limit N samples all classes, not the first folder
    samples = [group[i] for i in range(max(map(len, per_class))) for group in per_class if i < len(group)]
    return Dataset("imagefolder", root, classes, _limited(samples, limit, root), notes=notes)


def _index_by_name(folders: list[Path], classes: list[str]) -> dict[str, int]:
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        positions.setdefault(_normalised(name), []).append(i)
    index = {}
    for folder in folders:
        found = positions.get(_normalised(folder.name), [])
        if len(found) > 1:
            raise UsageError(f"{folder}: {folder.name!r} names classes {found} of the model; pass --classes "
                             "INDEX_FILE to say which")
        if found:
            index[folder.name] = found[0]
    return index


def _index_file(path: Path, num_classes: int) -> dict[str, int]:
    """Folder name -> class index from ``{folder: index}``, Keras' ``{"0": [wnid, name]}`` or one folder a line."""
    if not path.is_file():
        raise UsageError(f"{path}: index file not found")
    if path.suffix in (".json", ".yaml", ".yml"):
        data = _read_mapping(path)
        try:
            if all(isinstance(v, list) and v for v in data.values()):
                index = {str(v[0]): int(k) for k, v in data.items()}
            else:
                index = {str(k): int(v) for k, v in data.items()}
        except (TypeError, ValueError):
            raise UsageError(f"{path}: expected {{folder: index}} or {{index: [folder, name]}}") from None
    else:
        try:
            lines = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as err:
            raise UsageError(f"{path}: cannot read it: {err.strerror or err}") from None
        index = {name: i for i, name in enumerate(lines)}
    bad = [(k, v) for k, v in index.items() if not 0 <= v < num_classes]
    if bad:
        raise UsageError(f"{path}: index {bad[0][1]} of {bad[0][0]!r} is out of range for {num_classes} classes")
    return index


# ------------------------------------------------------------------------------------- entry


def detect_format(root: Path) -> str:
    """The layout of ``root`` from its folders; a one-line error when none fits."""
    if (root / "leftImg8bit").is_dir() or (root.name == "val" and root.parent.name == "leftImg8bit"):
        return "cityscapes"
    if (root / "images" / "validation").is_dir() or (root.name == "validation" and root.parent.name == "images"):
        return "ade20k"
    if (root / "images").is_dir() and any((root / n).is_dir() for n in LABEL_FOLDERS):
        return "masks"
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subfolders and not any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return "imagefolder"
    raise UsageError(f"{root}: cannot tell the dataset layout (no leftImg8bit/, images/validation/, images/ + "
                     "labels/, or class folders); pass --format cityscapes|ade20k|masks|imagefolder")


def open_dataset(data: str | Path, *, format: str | None, card: Any, limit: int | None = None,
                 classes_file: str | Path | None = None) -> Dataset:
    """Open and check ``data`` for ``card``'s task and classes (``--limit``: the first N samples)."""
    root = Path(data)
    if not root.exists():
        raise UsageError(f"{root}: no such folder; pass --data with a labelled dataset")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass --data with a labelled dataset folder")
    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    layout = format or detect_format(root)
    if TASK_OF[layout] != card.task:
        fitting = ", ".join(f for f in FORMATS if TASK_OF[f] == card.task)
        raise UsageError(f"{layout} is a {TASK_OF[layout]} layout but {card.name} is a {card.task} model; "
                         f"use --format {fitting}")
    extra = Path(classes_file) if classes_file is not None else None
    if extra is not None and layout not in ("masks", "imagefolder"):
        raise UsageError(f"--classes is for the masks and imagefolder layouts, not {layout}")
    if layout == "cityscapes":
        dataset = open_cityscapes(root, limit)
    elif layout == "ade20k":
        dataset = open_ade20k(root, limit, list(card.classes))
    elif layout == "masks":
        if extra is not None and not extra.is_file():
            raise UsageError(f"{extra}: classes file not found")
        dataset = open_masks(root, limit, extra, card.num_classes)
    else:
        dataset = open_imagefolder(root, limit, list(card.classes), extra)
    if len(dataset.classes) != card.num_classes:
        raise UsageError(f"{root}: {layout} labels have {len(dataset.classes)} classes but {card.name} predicts "
                         f"{card.num_classes}")
    return dataset
