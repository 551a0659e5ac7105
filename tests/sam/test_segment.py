"""``evit segment``: the exported encoder + decoder (runners only) and the zoo model in PyTorch on one
photo and one prompt: the mask, the overlay and the scores, and every bad input as one line, exit 2,
with nothing written."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from evit_deploy.bundle import load_bundle

from .conftest import MODEL

pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")


@pytest.fixture(scope="module")
def predictor(sam_fixtures: Path) -> dict[str, np.ndarray]:
    """The official EfficientViTSamPredictor on coffee.png, one positive click at (270, 200)."""
    return dict(np.load(sam_fixtures / "efficientvit_sam_l0.predictor.npz"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 127


def test_one_click_on_the_fixture_photo(cli: Any, l0_bundle: Path, sam_fixtures: Path, tmp_path: Path,
                                        predictor: dict[str, np.ndarray]) -> None:
    """The exported graphs with no PyTorch in the loop give the official predictor's best mask."""
    photo = sam_fixtures / "coffee.png"
    out = tmp_path / "out" / "mask.png"
    done = cli("segment", l0_bundle, photo, "--point", "270,200", "--out", out, "--json", tmp_path / "scores.json")
    assert done.code == 0, done
    assert "mask " in done.stdout and "(artifacts)" in done.stdout
    best = predictor["masks"][int(np.argmax(predictor["scores"]))]
    mask = _mask(out)
    assert mask.shape == (400, 600) and _iou(mask, best) >= 0.99
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["tokens"] == [1, 2, 3] and scores["chosen"] == int(np.argmax(predictor["scores"]))
    np.testing.assert_allclose(scores["scores"], predictor["scores"], atol=1e-4)
    assert scores["engine"]["engine"] == "artifacts" and scores["engine"]["decoder"]["target"] == "onnx"
    assert scores["mask_pixels"] == int(mask.sum())
    overlay = np.asarray(Image.open(tmp_path / "out" / "mask.overlay.png").convert("RGB"))
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert overlay.shape == original.shape
    assert np.abs(overlay[mask].astype(int) - original[mask]).mean() > 20  # the mask is tinted
    assert (overlay[~mask] == original[~mask]).all(axis=-1).mean() > 0.99  # elsewhere only the click is drawn
    assert tuple(overlay[200, 270]) == (0, 220, 0)  # the positive click, drawn green


def test_pytorch_gives_the_same_answer(cli: Any, l0_bundle: Path, l0_weights: Path, sam_fixtures: Path,
                                       tmp_path: Path) -> None:
    photo = sam_fixtures / "coffee.png"
    runs = {}
    for engine, source in (("artifacts", l0_bundle), ("pytorch", MODEL)):
        out = tmp_path / f"{engine}.png"
        extra = ["--weights", l0_weights] if engine == "pytorch" else []
        done = cli("segment", source, photo, "--point", "270,200", "--point", "420,300,0", *extra, "--out", out,
                   "--json", "-")
        assert done.code == 0, done
        runs[engine] = json.loads(done.stdout)
        assert runs[engine]["engine"]["engine"] == engine and runs[engine]["tokens"] == [0]  # two points: one answer
    assert _iou(_mask(tmp_path / "artifacts.png"), _mask(tmp_path / "pytorch.png")) >= 0.999
    assert runs["artifacts"]["scores"] == pytest.approx(runs["pytorch"]["scores"], abs=1e-4)


def test_an_encoder_artifact_finds_its_decoder_and_a_box_gives_one_answer(cli: Any, l0_bundle: Path,
                                                                           sam_fixtures: Path, tmp_path: Path) -> None:
    encoder = load_bundle(l0_bundle)[1]["encoder"]
    done = cli("segment", encoder, sam_fixtures / "coffee.png", "--box", "100,80,420,360", "--out",
               tmp_path / "box.png", "--overlay", tmp_path / "drawn.png", "--json", "-")
    assert done.code == 0, done
    data = json.loads(done.stdout)
    assert data["tokens"] == [0] and data["prompt"]["box"] == [100, 80, 420, 360]
    assert data["files"] == {"mask": str(tmp_path / "box.png"), "overlay": str(tmp_path / "drawn.png")}
    assert (tmp_path / "drawn.png").is_file()


def _args(case: str, bundle: Path, weights: Path, tmp_path: Path, photo: Path) -> list[Any]:
    artifacts = load_bundle(bundle)[1]
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    return {
        "outside": [bundle, photo, "--point", "700,10"],
        "box reversed": [bundle, photo, "--box", "300,10,100,200"],
        "label": [bundle, photo, "--point", "10,10,5"],
        "not an image": [bundle, text, "--point", "10,10"],
        "missing image": [bundle, tmp_path / "nowhere.png", "--point", "10,10"],
        "decoder as encoder": [artifacts["decoder"], photo, "--point", "10,10"],
        "encoder as decoder": [artifacts["encoder"], photo, "--point", "10,10", "--decoder", artifacts["encoder"]],
        "no prompt": [bundle, photo],
        "not png": [bundle, photo, "--point", "10,10", "--out", tmp_path / "mask.jpg"],
        "bad point": [bundle, photo, "--point", "3"],
        "not sam": ["efficientvit-b1-r224", photo, "--point", "10,10"],
        "unknown model": ["efficientvit-sam-l9", photo, "--point", "10,10"],
        "weights with export": [bundle, photo, "--point", "10,10", "--weights", weights],
    }[case]


BAD = {
    "outside": "point (700, 10) is outside the 600x400 image",
    "box reversed": "box (300, 10, 100, 200) has x1 < x0 or y1 < y0",
    "label": "--point '10,10,5': label 5 is not one of -1, 0, 1, 2, 3",
    "not an image": "notes.png is not an image PIL can read",
    "missing image": "nowhere.png: image file not found",
    "decoder as encoder": (f"{MODEL}.decoder.onnx is the decoder graph of {MODEL}; ARTIFACT must be the encoder "
                           "(or the bundle)"),
    "encoder as decoder": f"{MODEL}.encoder.onnx is the encoder graph of {MODEL}; --decoder must be a decoder",
    "no prompt": "segment needs a prompt: --point X,Y",
    "not png": "--out", "bad point": "--point '3' is not X,Y or X,Y,LABEL",
    "not sam": "efficientvit-b1-r224 is a classification model; segment takes an EfficientViT-SAM",
    "unknown model": "unknown model 'efficientvit-sam-l9'; did you mean",
    "weights with export": "--weights is for a zoo model name",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(cli: Any, l0_bundle: Path, l0_weights: Path, sam_fixtures: Path,
                                                  tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = _args(case, l0_bundle, l0_weights, work, sam_fixtures / "coffee.png")
    out = tmp_path / "result" / "mask.png"
    if "--out" not in args:
        args += ["--out", out]
    done = cli("segment", *args)
    assert done.code == 2, done
    assert len(done.error_lines) == 1 and BAD[case] in done.error_lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "result").exists()
    assert {p.name for p in work.iterdir()} == {"notes.png"}


def test_a_destination_below_a_file_is_refused_before_any_model_runs(cli: Any, l0_bundle: Path,
                                                                     sam_fixtures: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = cli("segment", l0_bundle, sam_fixtures / "coffee.png", "--point", "270,200", "--out",
               tmp_path / "ok.png", "--overlay", blocker / "overlay.png")
    expected = f"error: cannot write {blocker / 'overlay.png'}: {blocker} is a file, not a folder"
    assert done.code == 2 and done.error_lines == [expected], done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and "Traceback" not in done.stderr


def test_a_write_that_fails_midway_leaves_nothing_behind(cli: Any, l0_bundle: Path, sam_fixtures: Path,
                                                         tmp_path: Path) -> None:
    """The mask is written, then the overlay's name is too long for the file system: the mask and every
    partial file and created folder go again, and the failure is one line."""
    overlay = tmp_path / "new" / ("o" * 300 + ".png")
    done = cli("segment", l0_bundle, sam_fixtures / "coffee.png", "--point", "270,200", "--out",
               tmp_path / "new" / "mask.png", "--overlay", overlay)
    assert done.code == 2 and len(done.error_lines) == 1 and "cannot write" in done.error_lines[0], done
    assert list(tmp_path.iterdir()) == [] and "Traceback" not in done.stderr
