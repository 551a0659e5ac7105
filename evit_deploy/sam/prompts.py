"""Prompts for EfficientViT-SAM: what a user asks for, checked, and turned into decoder inputs.

A ``Prompt`` is one mask request (one row of the decoder's batch): points with labels and/or
one box, in the photo's own pixel coordinates. Prompts come from a JSON file
(``read_prompt_file``) or are generated per image (``generated_prompts``: a grid of single
clicks plus seeded boxes, for verification). ``decoder_inputs`` converts a list of them to the
decoder's ``point_coords`` / ``point_labels`` arrays in the 1024 frame, the way the official
predictor does: a box becomes two corners labelled 2 and 3; without a box a padding point
(0, 0) labelled -1 is appended.

Prompt file format (coordinates in pixels of the image; ``labels`` default to 1, positive)::

    {"prompts": [
        {"points": [[270, 200], [400, 120]], "labels": [1, 0]},
        {"box": [100, 80, 420, 360]},
        {"points": [[250, 210]], "box": [100, 80, 420, 360]}
    ]}

A bare list of prompt objects is accepted too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.errors import UsageError

from .transforms import LOW_RES, PROMPT_FRAME, boxes_to_frame, points_to_frame

__all__ = [
    "PADDING_LABEL",
    "POINT_LABELS",
    "Prompt",
    "decoder_batches",
    "decoder_inputs",
    "generated_prompts",
    "parse_prompts",
    "prompt_batches",
    "read_prompt_file",
]

POINT_LABELS: dict[int, str] = {
    -1: "padding",
    0: "negative point",
    1: "positive point",
    2: "box top-left corner",
    3: "box bottom-right corner",
}
"""The decoder's point labels (``point_labels`` input)."""

PADDING_LABEL = -1
_LABELS_TEXT = "-1 padding, 0 negative, 1 positive, 2/3 box corners"
_PROMPT_KEYS = ("points", "labels", "box")


@dataclass(frozen=True)
class Prompt:
    """One mask request in the photo's pixels: ``points`` (x, y) with ``labels``, and/or a ``box``
    (x0, y0, x1, y1)."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def check(self, image_size: tuple[int, int]) -> None:
        """Raise ``UsageError`` (one line) unless the prompt fits an image of ``image_size`` (h, w).

        A point must lie on a pixel (0 <= x < w, 0 <= y < h); a box within the image with
        x0 <= x1 and y0 <= y1.
        """
        height, width = image_size
        if not self.points and self.box is None:
            raise UsageError("a prompt needs at least one point or a box")
        if len(self.labels) != len(self.points):
            raise UsageError(
                f"{len(self.points)} point(s) but {len(self.labels)} label(s): give one label per point"
            )
        for label in self.labels:
            if label not in POINT_LABELS:
                raise UsageError(f"label {label} is not one of -1, 0, 1, 2, 3 ({_LABELS_TEXT})")
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise UsageError(
                    f"point ({_num(x)}, {_num(y)}) is outside the {width}x{height} image "
                    f"(x must be in [0, {width}), y in [0, {height}))"
                )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            shown = ", ".join(_num(v) for v in self.box)
            if x1 < x0 or y1 < y0:
                raise UsageError(
                    f"box ({shown}) has x1 < x0 or y1 < y0: give it as x0,y0,x1,y1 "
                    "(top-left, then bottom-right corner)"
                )
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise UsageError(f"box ({shown}) reaches outside the {width}x{height} image")


def _num(value: float) -> str:
    return f"{value:g}"


def generated_prompts(
    image_size: tuple[int, int], *, grid: int = 4, boxes: int = 4, seed: int | Sequence[int] = 0
) -> list[Prompt]:
    """``grid`` x ``grid`` single positive clicks at cell centres, then ``boxes`` seeded boxes.

    Every prompt becomes two decoder points (click + padding, or two corners), so the batch
    needs no extra padding and each row computes what it would alone.
    """
    height, width = image_size
    prompts = [
        Prompt(points=(((i + 0.5) * width / grid, (j + 0.5) * height / grid),), labels=(1,))
        for j in range(grid)
        for i in range(grid)
    ]
    rng = np.random.default_rng(seed)
    for _ in range(boxes):
        box_w, box_h = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        x0, y0 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
        prompts.append(Prompt(box=(round(x0, 2), round(y0, 2), round(x0 + box_w, 2), round(y0 + box_h, 2))))
    return prompts


def read_prompt_file(path: str | Path, image_size: tuple[int, int]) -> list[Prompt]:
    """The prompts of a JSON prompt file (module docstring), each checked against the image."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"prompt file {path}: cannot read it ({' '.join(str(err).split())})") from None
    except json.JSONDecodeError as err:
        raise UsageError(
            f"prompt file {path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    return parse_prompts(data, image_size, source=f"prompt file {path}")


def parse_prompts(data: Any, image_size: tuple[int, int], *, source: str = "prompts") -> list[Prompt]:
    """Prompts from parsed JSON (``{"prompts": [...]}`` or a list), checked; errors name the prompt."""
    items = data.get("prompts") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) != {"prompts"}:
        raise UsageError(f'{source}: expected {{"prompts": [...]}}, got keys {sorted(data)}')
    if not isinstance(items, list) or not items:
        raise UsageError(f"{source}: expected a non-empty list of prompts")
    prompts = []
    for index, item in enumerate(items):
        where = f"{source}, prompt {index}"
        try:
            prompt = _prompt(item)
            prompt.check(image_size)
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None
        prompts.append(prompt)
    return prompts


def _prompt(item: Any) -> Prompt:
    if not isinstance(item, dict):
        raise UsageError(f"expected an object with points/labels/box, got {type(item).__name__}")
    unknown = sorted(set(item) - set(_PROMPT_KEYS))
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(map(repr, unknown))}; a prompt has points, labels, box")
    points = tuple(_numbers(p, 2, "point [x, y]") for p in _list(item.get("points", []), "points"))
    labels = tuple(_label(v) for v in _list(item.get("labels", [1] * len(points)), "labels"))
    box = _numbers(item["box"], 4, "box [x0, y0, x1, y1]") if item.get("box") is not None else None
    return Prompt(points=points, labels=labels, box=box)  # type: ignore[arg-type]


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise UsageError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _numbers(value: Any, count: int, what: str) -> tuple[float, ...]:
    ok = isinstance(value, list) and len(value) == count
    if ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        return tuple(float(v) for v in value)
    raise UsageError(f"a {what} must be {count} finite numbers, got {json.dumps(value)}")


def _label(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise UsageError(f"label {json.dumps(value)} is not one of -1, 0, 1, 2, 3 ({_LABELS_TEXT})")
    return int(value)


def decoder_inputs(
    prompts: Sequence[Prompt], original_size: tuple[int, int], frame: int = PROMPT_FRAME
) -> tuple[np.ndarray, np.ndarray]:
    """``point_coords`` (B, N, 2) and ``point_labels`` (B, N), float32, in the ``frame`` (1024).

    Per prompt: its points, then the box as two corners labelled 2 and 3, or, with no box, one
    padding point (0, 0) labelled -1 (Meta's predictor does the same). Rows shorter than the
    longest are padded with more padding points: such a row's masks then differ slightly from
    a call of its own (the padding tokens take part in attention).
    """
    rows: list[tuple[np.ndarray, list[int]]] = []
    for prompt in prompts:
        coords = points_to_frame(
            np.array(prompt.points, dtype=np.float64).reshape(-1, 2), original_size, frame
        )
        labels = list(prompt.labels)
        if prompt.box is not None:
            corners = boxes_to_frame(np.array(prompt.box, dtype=np.float64), original_size, frame).reshape(
                2, 2
            )
            coords, labels = np.concatenate([coords, corners]), labels + [2, 3]
        else:
            coords, labels = np.concatenate([coords, np.zeros((1, 2), np.float32)]), labels + [PADDING_LABEL]
        rows.append((coords, labels))
    if not rows:
        raise UsageError("no prompts: give at least one point or box")
    width = max(len(labels) for _, labels in rows)
    point_coords = np.zeros((len(rows), width, 2), dtype=np.float32)
    point_labels = np.full((len(rows), width), PADDING_LABEL, dtype=np.float32)
    for row, (coords, labels) in enumerate(rows):
        point_coords[row, : len(labels)] = coords
        point_labels[row, : len(labels)] = labels
    return point_coords, point_labels


def decoder_batches(
    arrays: dict[str, np.ndarray], prompts: int | None, points: int | None
) -> list[dict[str, np.ndarray]]:
    """A prompt batch (every array (B, ...); ``point_coords`` (B, N, 2), ``point_labels`` (B, N))
    cut to fit a decoder exported with ``prompts`` rows and ``points`` points (None: dynamic).

    Rows with fewer points than the decoder takes get padding points (0, 0) labelled -1, as
    ``decoder_inputs`` pads; rows with more are refused. The rows go in chunks of ``prompts``,
    the last filled up by repeating its last row.
    """
    have = arrays["point_labels"].shape[1]
    if points is not None and have > points:
        raise UsageError(
            f"a prompt has {have} points (box corners and padding included), but the decoder was exported for "
            f"{points} per prompt; re-export it with --dynamic, or give fewer points"
        )
    if points is not None and have < points:
        extra = points - have
        arrays = dict(arrays)
        coords, labels = arrays["point_coords"], arrays["point_labels"]
        arrays["point_coords"] = np.concatenate([coords, np.zeros((len(coords), extra, 2), coords.dtype)], axis=1)
        arrays["point_labels"] = np.concatenate(
            [labels, np.full((len(labels), extra), PADDING_LABEL, labels.dtype)], axis=1
        )
    rows = len(arrays["point_labels"])
    size = prompts or rows
    chunks = []
    for start in range(0, rows, size):
        index = np.minimum(np.arange(start, start + size), rows - 1)
        chunks.append({name: np.ascontiguousarray(value[index]) for name, value in arrays.items()})
    return chunks


def prompt_batches(
    prompts: Sequence[Prompt],
    original_size: tuple[int, int],
    frame: int = PROMPT_FRAME,
    *,
    fixed: tuple[int | None, int | None] = (None, None),
    mask_input: bool = False,
) -> list[dict[str, np.ndarray]]:
    """``decoder_inputs`` cut to a decoder of ``fixed`` (prompts, points) sizes (None: dynamic), with an
    absent previous mask (zeros, ``has_mask_input`` 0) for a decoder that takes one."""
    coords, labels = decoder_inputs(prompts, original_size, frame)
    arrays = {"point_coords": coords, "point_labels": labels}
    if mask_input:
        arrays["mask_input"] = np.zeros((len(labels), 1, LOW_RES, LOW_RES), np.float32)
        arrays["has_mask_input"] = np.zeros(len(labels), np.float32)
    return decoder_batches(arrays, *fixed)
