"""Small labelled datasets in each layout, made here from scikit-image's photos, and the artifacts to score.

Labels are the fp32 PyTorch reference's own predictions (computed by ``official``, the
independent torch pipeline) with shapes drawn over them: ignored regions (Cityscapes ids that
map to ignore, ADE20K's 0, the masks layout's ignore index) and patches of other classes. So
the reference scores high but not 100%, and whatever an artifact changes shows as a drop: the
situation of a trained model on its validation set, which seeded weights on photos cannot give.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from . import official

SEG, SEG_KEYS, SEG_RES, SEG_LABEL = "efficientvit-seg-b0-cityscapes", "efficientvit_seg_b0_cityscapes", (64, 128), (128, 256)
ADE, ADE_KEYS, ADE_RES, ADE_LABEL = "efficientvit-seg-b1-ade20k", "efficientvit_seg_b1_ade20k", (64, 96), (128, 192)
# cls-B1 at 128: with the seeded weights cls-B0 at 64 predicts one class for every photo (and int8 changes
# none of 24 top-1s), cls-B1 at 128 predicts several with thin margins (median top-1 - top-2: 0.03)
CLS, CLS_KEYS, CLS_RES = "efficientvit-b1-r224", "efficientvit_cls_b1", 128
PHOTOS = ("chelsea", "immunohistochemistry", "camera", "moon", "coins", "grass")
MASKS_IGNORE = 250


def _model(name: str, weights: Path) -> Any:
    from evit_deploy import zoo

    return zoo.create_model(name, weights)


def _export(out: Path, model: str, weights: Path, resolution: tuple[int, int], precision: str = "fp32",
            calib: Path | None = None) -> Path:
    from evit_deploy import api

    if precision == "fp32":
        return api.export(model, target="onnx", weights=weights, out=out, resolution=resolution).artifact
    return api.export(model, target="trt", weights=weights, out=out, resolution=resolution, precision=precision,
                      options={"plan_only": True}, calib=calib, calib_samples=7).artifact


def _photos(photo_folder: Callable[..., Path], variants: int = 1) -> list[Path]:
    return sorted(photo_folder(PHOTOS, variants=variants).glob("*.png"))


def _shapes(labels: np.ndarray, fills: list[int]) -> np.ndarray:
    """Draw a bottom band, an ellipse and a triangle over ``labels`` with the given values."""
    image = Image.fromarray(labels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    h, w = labels.shape
    draw.rectangle((0, int(0.85 * h), w - 1, h - 1), fill=fills[0])
    draw.ellipse((w // 5, h // 5, w // 2, h // 2), fill=fills[1])
    draw.polygon([(int(0.6 * w), int(0.2 * h)), (int(0.9 * w), int(0.3 * h)), (int(0.7 * w), int(0.6 * h))],
                 fill=fills[2])
    return np.asarray(image)


def _resized(photo: Path, size: tuple[int, int]) -> Image.Image:
    return Image.open(photo).convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)


# ------------------------------------------------------------------------------------- segmentation


@pytest.fixture(scope="session")
def seg_weights(seeded_checkpoint) -> Path:
    return seeded_checkpoint(SEG_KEYS)


@pytest.fixture(scope="session")
def seg_fp32(tmp_path_factory, seg_weights) -> Path:
    return _export(tmp_path_factory.mktemp("seg32"), SEG, seg_weights, SEG_RES)


@pytest.fixture(scope="session")
def seg_int8(tmp_path_factory, seg_weights, calib_photos) -> Path:
    return _export(tmp_path_factory.mktemp("seg8"), SEG, seg_weights, SEG_RES, "int8", calib_photos)


@pytest.fixture(scope="session")
def cityscapes(tmp_path_factory, photo_folder, seg_weights) -> Path:
    """leftImg8bit/val/{aachen,bochum}/*_leftImg8bit.png + gtFine/val/.../*_gtFine_labelIds.png, 128x256."""
    root = tmp_path_factory.mktemp("cityscapes")
    model = _model(SEG, seg_weights)
    for index, photo in enumerate(_photos(photo_folder)):
        city = ("aachen", "bochum")[index % 2]
        stem = f"{city}_{index:06d}_000019"
        image = root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        _resized(photo, SEG_LABEL).save(image)
        train_ids = official.seg_prediction(model, image, SEG_RES, SEG_LABEL)
        label_ids = np.array(official.LABEL_ID_OF_TRAIN_ID)[train_ids]
        label_ids = _shapes(label_ids, [1, 26, 9])  # ego vehicle (ignored), car, parking (ignored)
        label = root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_ids).save(label)
    return root


@pytest.fixture(scope="session")
def masks(tmp_path_factory, cityscapes) -> Path:
    """images/NAME.png + labels/NAME.png (train ids, ignore 250) + classes.yaml, from the Cityscapes set."""
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for image in sorted((cityscapes / "leftImg8bit" / "val").glob("*/*.png")):
        name = image.name.removesuffix("_leftImg8bit.png")
        shutil.copy(image, root / "images" / f"{name}.png")
        label_ids = np.array(Image.open(next(cityscapes.glob(f"gtFine/val/*/{name}_gtFine_labelIds.png"))))
        train_ids = official.CITYSCAPES_LABEL_MAP[label_ids]
        Image.fromarray(np.where(train_ids < 0, MASKS_IGNORE, train_ids).astype(np.uint8)).save(
            root / "labels" / f"{name}.png")
    names = [f"class {i}" for i in range(19)]
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": names, "ignore_index": MASKS_IGNORE}))
    return root


@pytest.fixture(scope="session")
def ade_weights(seeded_checkpoint) -> Path:
    return seeded_checkpoint(ADE_KEYS)


@pytest.fixture(scope="session")
def ade_fp32(tmp_path_factory, ade_weights) -> Path:
    return _export(tmp_path_factory.mktemp("ade32"), ADE, ade_weights, ADE_RES)


@pytest.fixture(scope="session")
def ade_int8(tmp_path_factory, ade_weights, calib_photos) -> Path:
    return _export(tmp_path_factory.mktemp("ade8"), ADE, ade_weights, ADE_RES, "int8", calib_photos)


@pytest.fixture(scope="session")
def ade20k(tmp_path_factory, photo_folder, ade_weights) -> Path:
    """images/validation/*.jpg + annotations/validation/*.png (class + 1, 0 ignored), 128x192."""
    root = tmp_path_factory.mktemp("ade20k")
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    model = _model(ADE, ade_weights)
    for index, photo in enumerate(_photos(photo_folder, variants=2)):
        image = root / "images" / "validation" / f"ADE_val_{index:08d}.jpg"
        _resized(photo, ADE_LABEL).save(image, quality=95)
        classes = official.seg_prediction(model, image, ADE_RES, ADE_LABEL)  # from the JPEG as stored
        values = _shapes(classes + 1, [0, 13, 0])  # ignored band, person (class 12), ignored triangle
        Image.fromarray(values).save(root / "annotations" / "validation" / f"ADE_val_{index:08d}.png")
    return root


# ------------------------------------------------------------------------------------- classification


@pytest.fixture(scope="session")
def cls_weights(seeded_checkpoint) -> Path:
    return seeded_checkpoint(CLS_KEYS)


@pytest.fixture(scope="session")
def cls_fp32(tmp_path_factory, cls_weights) -> Path:
    return _export(tmp_path_factory.mktemp("cls32"), CLS, cls_weights, (CLS_RES, CLS_RES))


@pytest.fixture(scope="session")
def cls_int8(tmp_path_factory, cls_weights, calib_photos) -> Path:
    return _export(tmp_path_factory.mktemp("cls8"), CLS, cls_weights, (CLS_RES, CLS_RES), "int8", calib_photos)


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory, photo_folder, cls_weights) -> Path:
    """CLASS_NAME/photo.png: each photo in the folder of the reference's top-1 class, but every third one
    in a class it does not predict first (goldfish, or tench), so the reference is right on about two thirds."""
    from evit_deploy import zoo

    root = tmp_path_factory.mktemp("imagefolder")
    classes = zoo.get_card(CLS).classes
    model = _model(CLS, cls_weights)
    crop = zoo.get_card(CLS).preprocessing.crop_ratio
    for index, photo in enumerate(sorted(photo_folder(PHOTOS, variants=4).glob("*.png"))):
        top1 = int(official.cls_logits(model, photo, CLS_RES, crop).argmax())
        name = classes[top1]
        if index % 3 == 2 or classes.count(name) > 1:  # (a name the card lists twice cannot name a folder)
            name = "tench" if top1 == 1 else "goldfish"
        (root / name).mkdir(exist_ok=True)
        shutil.copy(photo, root / name / photo.name)
    return root
