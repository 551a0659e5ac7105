"""Every bad input of ``evit eval``: one line on stderr, exit 2, nothing written. Layout detection too.

The datasets here are tiny and wrong on purpose; a zoo model name (PyTorch alone, random weights)
stands in for an artifact wherever the error comes before any inference.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from evit_deploy.errors import UsageError
from evit_deploy.labelled.datasets import detect_format

SEG = "efficientvit-seg-b0-cityscapes"
CLS = "efficientvit-b0-r224"
SIZE = (32, 64)


def _image(path: Path, size: tuple[int, int] = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def cityscapes(root: Path, label: np.ndarray | None = None, with_label: bool = True) -> Path:
    _image(root / "leftImg8bit/val/ulm/ulm_000000_000019_leftImg8bit.png")
    if with_label:
        _label(root / "gtFine/val/ulm/ulm_000000_000019_gtFine_labelIds.png",
               np.full(SIZE, 7) if label is None else label)
    else:
        (root / "gtFine/val/ulm").mkdir(parents=True)
    return root


def ade20k(root: Path, label: np.ndarray) -> Path:
    _image(root / "images/validation/ADE_val_00000001.jpg")
    _label(root / "annotations/validation/ADE_val_00000001.png", label)
    return root


def masks(root: Path, label: np.ndarray, classes: dict | None = None) -> Path:
    _image(root / "images/a.png")
    _label(root / "labels/a.png", label)
    if classes is not None:
        (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    return root


def imagefolder(root: Path, *names: str) -> Path:
    for name in names:
        _image(root / name / "x.png")
    return root


NINETEEN = {"classes": [f"c{i}" for i in range(19)], "ignore_index": 255}


def bad_label(value: int) -> np.ndarray:
    label = np.full(SIZE, 7)
    label[3, 5] = value
    return label


CASES = {
    "cityscapes_missing_images": (lambda t: t, [SEG, "--format", "cityscapes"],
                                  "not in the cityscapes layout: leftImg8bit/val/ is missing"),
    "cityscapes_missing_gtfine": (lambda t: (_image(t / "leftImg8bit/val/ulm/u_leftImg8bit.png"), t)[1],
                                  [SEG, "--format", "cityscapes"],
                                  "not in the cityscapes layout: gtFine/val/ is missing (the labels"),
    "cityscapes_missing_label": (lambda t: cityscapes(t, with_label=False), [SEG],
                                 ("gtFine/val/ulm/ulm_000000_000019_gtFine_labelIds.png is missing (the labels of "
                                 "leftImg8bit/val/ulm/ulm_000000_000019_leftImg8bit.png)")),
    "cityscapes_label_size": (lambda t: cityscapes(t, label=np.full((16, 32), 7)), [SEG],
                              ("labels are 16x32 but the image ulm_000000_000019_leftImg8bit.png is 32x64; a label "
                              "image must have its image's size")),
    "cityscapes_id_out_of_range": (lambda t: cityscapes(t, label=bad_label(34)), [SEG],
                                   "class id 34 at row 3, column 5 is out of range: Cityscapes labelIds are 0-33"),
    "ade20k_id_out_of_range": (lambda t: ade20k(t, bad_label(151)), ["efficientvit-seg-b1-ade20k"],
                               ("class id 151 at row 3, column 5 is out of range: ADE20K annotations hold 0 (ignored) "
                               "and 1-150")),
    "ade20k_missing_annotations": (lambda t: (_image(t / "images/validation/a.jpg"), t)[1],
                                   ["efficientvit-seg-b1-ade20k", "--format", "ade20k"],
                                   "not in the ade20k layout: annotations/validation/ is missing"),
    "masks_id_out_of_range": (lambda t: masks(t, bad_label(19), NINETEEN), [SEG],
                              "class id 19 at row 3, column 5 is out of range: 19 classes (0-18), ignore index 255"),
    "masks_rgb_label": (lambda t: (masks(t, np.zeros(SIZE), NINETEEN), _image(t / "labels/a.png"))[0], [SEG],
                        "labels/a.png: a RGB image; labels must be single-channel PNGs of class ids"),
    "masks_without_classes": (lambda t: masks(t, np.zeros(SIZE)), [SEG],
                              "not in the masks layout: classes.yaml is missing"),
    "masks_class_count": (lambda t: masks(t, np.zeros(SIZE), {"classes": ["a", "b"]}), [SEG],
                          "classes.yaml: names 2 classes but the model predicts 19"),
    "masks_ignore_is_a_class": (lambda t: masks(t, np.zeros(SIZE), {**NINETEEN, "ignore_index": 3}), [SEG],
                                "ignore_index 3 is also class 'c3'; pick a value >= 19"),
    "unknown_folder": (lambda t: imagefolder(t, "tench", "not a class", "zebra"), [CLS],
                       ("unknown class folder(s) 'not a class': not among the model's class names; rename the "
                       "folders or pass --classes INDEX_FILE")),
    "ambiguous_folder": (lambda t: imagefolder(t, "crane"), [CLS],
                         "'crane' names classes [134, 517] of the model; pass --classes INDEX_FILE"),
    "synset_subset": (lambda t: imagefolder(t, "n01440764", "n01443537"), [CLS],
                      ("unknown class folder(s) 'n01440764', 'n01443537': not among the model's class names; "
                      "ImageNet synset folders need an index file")),
    "layout_for_another_task": (lambda t: imagefolder(t, "tench"), [SEG, "--format", "imagefolder"],
                                ("imagefolder is a classification layout but efficientvit-seg-b0-cityscapes is a "
                                "segmentation model; use --format cityscapes, ade20k, masks")),
    "classes_count_mismatch": (lambda t: cityscapes(t), ["efficientvit-seg-b1-ade20k"],
                               "cityscapes labels have 19 classes but efficientvit-seg-b1-ade20k predicts 150"),
    "undetectable": (lambda t: (_image(t / "a.png"), t)[1], [SEG],
                     ("cannot tell the dataset layout (no leftImg8bit/, images/validation/, images/ + labels/, or "
                     "class folders); pass --format")),
    "unknown_format": (lambda t: t, [SEG, "--format", "coco"], "unknown --format 'coco'; choose one of"),
    "limit_zero": (lambda t: cityscapes(t), [SEG, "--limit", "0"], "--limit must be at least 1 (got '0')"),
    "negative_max_drop": (lambda t: cityscapes(t), [SEG, "--max-drop", "-1"], "--max-drop must be at least 0"),
    "max_drop_without_artifact": (lambda t: cityscapes(t), [SEG, "--max-drop", "1"],
                                  "--max-drop compares an artifact with its PyTorch reference"),
    "no_such_source": (lambda t: cityscapes(t), ["out/model.onnx"], "out/model.onnx: no such artifact"),
    "unknown_model": (lambda t: cityscapes(t), ["efficientvit-b9"], ("efficientvit-b9: neither an artifact nor a "
                                                                    "zoo model (unknown model 'efficientvit-b9'")),
    "confusion_not_png": (lambda t: cityscapes(t), [SEG, "--confusion", "c.jpg"], "--confusion c.jpg: give a .png"),
    "json_folder_missing": (lambda t: cityscapes(t), [SEG, "--json", "nowhere/e.json"],
                            "--json nowhere/e.json: folder nowhere does not exist"),
    "classes_for_cityscapes": (lambda t: cityscapes(t), [SEG, "--classes", "x.yaml"],
                               "--classes is for the masks and imagefolder layouts, not cityscapes"),
    "missing_weights": (lambda t: cityscapes(t), [SEG, "--weights", "none.pt"], "none.pt: weights file not found"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    make, args, message = CASES[case]
    (tmp_path / "data").mkdir()
    data = make(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    result = cli("eval", args[0], "--data", data, *args[1:])
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.error_lines[0], result.error_lines
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.png"))


def test_missing_data_folder(cli, tmp_path: Path) -> None:
    result = cli("eval", SEG, "--data", tmp_path / "nope")
    assert result.code == 2 and result.error_lines == [(f"error: {tmp_path / 'nope'}: no such folder; pass --data "
                                                       "with a labelled dataset")]


def test_resolution_with_an_artifact_is_refused(cli, seg_fp32, tmp_path: Path) -> None:
    result = cli("eval", seg_fp32, "--data", cityscapes(tmp_path / "d"), "--resolution", "128x256")
    assert result.code == 2
    assert result.error_lines == [(f"error: --resolution is for a zoo model name; {seg_fp32.name} is evaluated at its "
                                  "exported input")]


@pytest.mark.parametrize("make,expected", [
    (lambda t: cityscapes(t), "cityscapes"),
    (lambda t: cityscapes(t) / "leftImg8bit" / "val", "cityscapes"),  # the official script's --path
    (lambda t: ade20k(t, np.zeros(SIZE)), "ade20k"),
    (lambda t: masks(t, np.zeros(SIZE)), "masks"),
    (lambda t: imagefolder(t, "tench", "goldfish"), "imagefolder"),
])
def test_layouts_are_detected(tmp_path: Path, make, expected: str) -> None:
    assert detect_format(make(tmp_path / "d")) == expected


def test_detection_failure_names_the_layouts(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="cannot tell the dataset layout"):
        detect_format(tmp_path / "d")


def test_index_file_out_of_range_is_refused(cli, tmp_path: Path) -> None:
    data = imagefolder(tmp_path / "d", "n01440764")
    (tmp_path / "index.txt").write_text("n01440764\n" * 1001)
    result = cli("eval", CLS, "--data", data, "--classes", tmp_path / "index.txt")
    assert result.code == 2
    assert result.error_lines == [(f"error: {tmp_path / 'index.txt'}: index 1000 of 'n01440764' is out of range for "
                                  "1000 classes")]
