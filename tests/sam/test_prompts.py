"""SAM prompts: generated sets, prompt files with their errors, and the decoder's arrays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evit_deploy.errors import UsageError
from evit_deploy.sam import Prompt, decoder_inputs, generated_prompts, points_to_frame, read_prompt_file

IMAGE = (400, 600)  # (h, w) of the fixture photo


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_generated_prompts_are_deterministic_and_valid() -> None:
    prompts = generated_prompts(IMAGE, grid=4, boxes=4, seed=7)
    assert prompts == generated_prompts(IMAGE, grid=4, boxes=4, seed=7)
    assert prompts[-4:] != generated_prompts(IMAGE, grid=4, boxes=4, seed=8)[-4:]
    clicks, boxes = prompts[:16], prompts[16:]
    assert all(p.labels == (1,) and p.box is None for p in clicks) and len({p.points for p in clicks}) == 16
    assert len(boxes) == 4 and all(p.box is not None and not p.points for p in boxes)
    for prompt in prompts:
        prompt.check(IMAGE)
    coords, labels = decoder_inputs(prompts, IMAGE)
    assert coords.shape == (20, 2, 2) and labels.shape == (20, 2)  # no row needs extra padding
    assert (labels[:16] == [1, -1]).all() and (labels[16:] == [2, 3]).all()


def test_decoder_inputs_like_the_official_predictor() -> None:
    """Points then the box's corners (labels 2, 3); no box: one padding point (0, 0) label -1;
    short rows padded with more padding points. Coordinates in the 1024 frame."""
    prompts = [
        Prompt(points=((270.0, 200.0),), labels=(1,)),
        Prompt(box=(30.0, 40.0, 300.0, 200.0)),
        Prompt(points=((10.0, 20.0), (50.0, 60.0)), labels=(1, 0), box=(5.0, 6.0, 70.0, 80.0)),
    ]
    coords, labels = decoder_inputs(prompts, IMAGE)
    assert coords.dtype == labels.dtype == np.float32 and coords.shape == (3, 4, 2)
    np.testing.assert_array_equal(labels, [[1, -1, -1, -1], [2, 3, -1, -1], [1, 0, 2, 3]])
    np.testing.assert_array_equal(coords[0, 0], points_to_frame(np.array([270.0, 200.0]), IMAGE))
    np.testing.assert_array_equal(coords[0, 1:], 0)
    np.testing.assert_array_equal(
        coords[1, :2], points_to_frame(np.array([[30.0, 40.0], [300.0, 200.0]]), IMAGE)
    )
    np.testing.assert_array_equal(coords[2, 2:], points_to_frame(np.array([[5.0, 6.0], [70.0, 80.0]]), IMAGE))


def test_prompt_file_reads_points_labels_and_boxes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "prompts": [
                {"points": [[270, 200], [400, 120.5]], "labels": [1, 0]},
                {"box": [100, 80, 420, 360]},
                {"points": [[250, 210]], "box": [100, 80, 420, 360]},
            ]
        },
    )
    assert read_prompt_file(path, IMAGE) == [
        Prompt(points=((270.0, 200.0), (400.0, 120.5)), labels=(1, 0)),
        Prompt(box=(100.0, 80.0, 420.0, 360.0)),
        Prompt(points=((250.0, 210.0),), labels=(1,), box=(100.0, 80.0, 420.0, 360.0)),  # labels default to 1
    ]
    bare_list = _write(tmp_path, [{"points": [[0, 0]], "labels": [1]}])
    assert read_prompt_file(bare_list, IMAGE) == [Prompt(points=((0.0, 0.0),), labels=(1,))]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"points": [[600, 10]], "labels": [1]}, "prompt 0: point (600, 10) is outside the 600x400 image"),
        ({"points": [[10, -1]], "labels": [1]}, "point (10, -1) is outside the 600x400 image"),
        ({"box": [300, 10, 100, 200]}, "box (300, 10, 100, 200) has x1 < x0 or y1 < y0"),
        ({"box": [10, 300, 100, 200]}, "box (10, 300, 100, 200) has x1 < x0 or y1 < y0"),
        ({"box": [10, 10, 601, 200]}, "box (10, 10, 601, 200) reaches outside the 600x400 image"),
        ({"points": [[10, 10]], "labels": [5]}, "label 5 is not one of -1, 0, 1, 2, 3"),
        ({"points": [[10, 10]], "labels": [-2]}, "label -2 is not one of -1, 0, 1, 2, 3"),
        ({"points": [[10, 10]], "labels": [0.5]}, "label 0.5 is not one of -1, 0, 1, 2, 3"),
        ({"points": [[10, 10]], "labels": ["1"]}, 'label "1" is not one of'),
        ({"points": [[10, 10], [20, 20]], "labels": [1]}, "2 point(s) but 1 label(s)"),
        ({"points": [[10]], "labels": [1]}, "a point [x, y] must be 2 finite numbers, got [10]"),
        ({"box": [1, 2, 3]}, "a box [x0, y0, x1, y1] must be 4 finite numbers"),
        ({"point": [[10, 10]]}, "unknown key(s) 'point'; a prompt has points, labels, box"),
        ({}, "a prompt needs at least one point or a box"),
        ("click here", "expected an object with points/labels/box, got str"),
    ],
)
def test_prompt_file_errors_are_one_line(tmp_path: Path, prompt: Any, message: str) -> None:
    path = _write(tmp_path, {"prompts": [prompt]})
    with pytest.raises(UsageError) as err:
        read_prompt_file(path, IMAGE)
    text = str(err.value)
    assert text.startswith(f"prompt file {path}, prompt 0: ") and message in text, text
    assert "\n" not in text and err.value.exit_code == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "{not json",
            "not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)",
        ),
        ("[]", "expected a non-empty list of prompts"),
        ('{"prompts": [], "extra": 1}', "expected {\"prompts\": [...]}, got keys ['extra', 'prompts']"),
        ('{"points": [[1, 2]]}', "expected {\"prompts\": [...]}, got keys ['points']"),
    ],
)
def test_prompt_file_format_errors(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(UsageError, match="^prompt file ") as err:
        read_prompt_file(path, IMAGE)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="prompt file not found: "):
        read_prompt_file(tmp_path / "absent.json", IMAGE)


def test_no_prompts_for_the_decoder() -> None:
    with pytest.raises(UsageError, match="no prompts"):
        decoder_inputs([], IMAGE)
