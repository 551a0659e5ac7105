"""The requests of what users build on the core commands: segment, eval, benchmark, debug."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from evit_deploy.errors import UsageError
from evit_deploy.requests.base import (
    Request,
    Resolution,
    Seed,
    Threads,
    ZooModelRequest,
    _existing_file,
    _names,
    _path_text,
    _resolution,
    _weights_of,
    cli,
)
from evit_deploy.sam import POINT_LABELS
from evit_deploy.spec import Precision

LAYER_MODES = ("auto", "all")  # evit debug --layers
# Relative L2 a healthy artifact of each precision stays under at every layer (seg-B1 and cls-B0,
# seeded weights, photos; see tests/debug). Over it, something is wrong, or int8 is lossy there.
DEBUG_THRESHOLDS = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.3}


def _numbers(value: Any, flag: str, form: str, example: str) -> tuple[float, ...]:
    """``"270,200"`` (or a tuple of numbers) -> floats, finite; anything else one line naming the flag."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or not all(math.isfinite(n) for n in numbers):
        raise UsageError(f"{flag} {value!r} is not {form} (e.g. {example})")
    return numbers


def _points(value: Any) -> Any:
    """``--point X,Y[,LABEL]`` each -> (x, y, label); the label defaults to 1 (a positive click)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"--point takes X,Y or X,Y,LABEL (e.g. 270,200), got {value!r}")
    points = []
    for item in value:
        numbers = _numbers(item, "--point", "X,Y or X,Y,LABEL", "270,200 or 400,120,0")
        if len(numbers) not in (2, 3):
            raise UsageError(f"--point {item!r} is not X,Y or X,Y,LABEL (e.g. 270,200 or 400,120,0)")
        label = numbers[2] if len(numbers) == 3 else 1.0
        if label != int(label) or int(label) not in POINT_LABELS:
            raise UsageError(f"--point {item!r}: label {label:g} is not one of -1, 0, 1, 2, 3 "
                             "(-1 padding, 0 negative, 1 positive, 2/3 box corners)")
        points.append((numbers[0], numbers[1], int(label)))
    return points


def _box(value: Any) -> Any:
    if value is None:
        return None
    numbers = _numbers(value, "--box", "X0,Y0,X1,Y1", "100,80,420,360")
    if len(numbers) != 4:
        raise UsageError(f"--box {value!r} is not X0,Y0,X1,Y1 (e.g. 100,80,420,360)")
    return numbers


class SegmentRequest(Request):
    """``evit segment``: one SAM prompt (points and/or a box) on one photo -> a mask, an overlay, the scores."""

    command: ClassVar[str] = "segment"

    artifact: Annotated[str, BeforeValidator(_path_text)] = Field(
        description="A SAM export: its bundle (MODEL.evit.json) or its encoder artifact; or a zoo model name, "
                    "run in PyTorch (with --weights).", json_schema_extra=cli(argument=True))
    image: Path = Field(description="The photo (any image PIL reads).", json_schema_extra=cli(argument=True))
    points: Annotated[list[tuple[float, float, int]], BeforeValidator(_points)] = Field(
        default_factory=list, description="A click in the photo's pixels, LABEL 1 positive (default) or 0 negative; "
                                          "repeat for several.",
        json_schema_extra=cli("--point", metavar="X,Y[,LABEL]", as_type=list))
    box: Annotated[tuple[float, float, float, float] | None, BeforeValidator(_box)] = Field(
        None, description="A box in the photo's pixels: top-left, then bottom-right corner.",
        json_schema_extra=cli(metavar="X0,Y0,X1,Y1", as_type=str))
    out: Path = Field(Path("mask.png"), description="The binary mask (PNG, 255 = object).")
    overlay: Path | None = Field(None, description="The photo with the mask and the prompt drawn (PNG; default: "
                                                   "OUT's name with .overlay.png).")
    multimask: bool | None = Field(None, description="Choose among three candidate masks (default: for a single "
                                                     "click, as the official predictor), else the one answer.",
                                   json_schema_extra=cli("--multimask/--no-multimask"))
    decoder: Path | None = Field(None, description="A decoder artifact to use with the encoder ARTIFACT (default: "
                                                   "the one exported with it).")
    weights: Path | None = Field(None, description="Weights for a zoo model name (PyTorch).")
    seed: Seed = Field(0, description="Seed for random weights when a zoo model has no --weights.")
    device: str = Field("cpu", description="cpu or cuda (where the runtime runs).")
    threads: Threads = Field(None, description="Runtime threads.")

    @field_validator("image")
    @classmethod
    def _image(cls, value: Path) -> Path:
        return _existing_file(value, "IMAGE", "image")  # type: ignore[return-value]

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None) -> Path | None:
        return _existing_file(value, "--weights", "weights")

    @field_validator("out", "overlay")
    @classmethod
    def _png(cls, value: Path | None, info: Any) -> Path | None:
        if value is not None and value.suffix.lower() != ".png":
            raise UsageError(f"--{info.field_name} {value}: give a .png file name")
        return value

    @model_validator(mode="after")
    def _a_prompt(self) -> SegmentRequest:
        if not self.points and self.box is None:
            raise UsageError("segment needs a prompt: --point X,Y (repeat for several) and/or --box X0,Y0,X1,Y1")
        return self

    @property
    def overlay_path(self) -> Path:
        return self.overlay or self.out.with_name(f"{self.out.stem}.overlay.png")


class LabelledData(Request):
    """Scoring on the user's labelled data: the flags ``eval`` and ``benchmark`` share."""

    format: str | None = Field(None, description="cityscapes, ade20k, masks or imagefolder (default: detected from "
                                                 "the folder).")
    limit: int | None = Field(None, ge=1, description="Evaluate the first N images only.")
    classes: Path | None = Field(None, description="masks: the classes YAML (default DATA/classes.yaml); imagefolder: "
                                                   "an index file mapping folder names to class indices.")
    max_drop: float | None = Field(None, ge=0, description="Fail (exit 1) when an artifact loses more than this many "
                                                          "points of mIoU / top-1 against PyTorch.")


class EvalRequest(LabelledData):
    """``evit eval``: the task metric of an artifact and of its PyTorch reference on labelled data."""

    command: ClassVar[str] = "eval"

    source: Annotated[str, BeforeValidator(_path_text)] = Field(
        description="An exported artifact (its .evit.json beside it), or a zoo model name (PyTorch alone).",
        json_schema_extra=cli(argument=True, metavar="ARTIFACT|MODEL"))
    data: Path = Field(description="The labelled dataset folder.")
    weights: Path | None = Field(None, description="PyTorch weights (default for an artifact: those recorded at "
                                                   "export).")
    resolution: Resolution = Field(None, description="HxW input for a zoo model instead of the card's protocol (said "
                                                     "in the output).", json_schema_extra=cli(metavar="HxW", as_type=str))
    device: str = Field("cpu", description="Where the artifact runs: cpu or cuda here, or an inventory device "
                                           "NAME[:RUNTIME] over SSH (the PyTorch reference runs here).")
    inventory: Path | None = Field(None, description="devices.yaml (default: $EVIT_DEVICES, else "
                                                     "~/.config/evit/devices.yaml).")
    threads: Threads = Field(None, description="Runtime threads.")
    reference: bool = Field(True, description="Also score the PyTorch reference (an artifact only).")
    seed: Seed = Field(0, description="Seed for random weights of a zoo model given without --weights.")

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _weights_of(value, info.data.get("source"))

    @model_validator(mode="after")
    def _drop_needs_an_artifact(self) -> Self:
        if self.max_drop is not None and (not self.reference or not Path(self.source).exists()):
            raise UsageError("--max-drop compares an artifact with its PyTorch reference: give an artifact, "
                             "without --no-reference")
        return self


def _resolutions(value: Any) -> Any:
    """``"512x1024,256x512"`` or a list of resolutions -> [(H, W), ...]."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise UsageError(f"--resolution takes HxW[,HxW...] (e.g. 512x1024), got {value!r}")
    if isinstance(items, tuple) and len(items) == 2 and all(isinstance(v, int) for v in items):
        items = [items]  # one (H, W) pair
    parsed = [_resolution(item.strip() if isinstance(item, str) else item) for item in items]
    return list(dict.fromkeys(parsed))


def _shard(value: Any) -> Any:
    """``"2/4"`` (or ``(2, 4)``) -> (2, 4): the second of four slices."""
    if value is None:
        return None
    text = f"{value[0]}/{value[1]}" if isinstance(value, (tuple, list)) and len(value) == 2 else str(value)
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--shard takes I/N, the I-th of N slices (e.g. 1/4), got {text!r}")
    index, count = int(parts[0]), int(parts[1])
    if count < 1:
        raise UsageError(f"--shard {text}: N, the number of slices, must be at least 1")
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text}: I must be from 1 to N (here 1 to {count})")
    return index, count


Names = Annotated[list[str] | None, BeforeValidator(_names)]


class BenchmarkRequest(ZooModelRequest, LabelledData):
    """``evit benchmark``: every target x precision (x resolution x device) exported, checked, scored and timed."""

    command: ClassVar[str] = "benchmark"

    model: str = Field(description="Zoo name, e.g. efficientvit-seg-b1-cityscapes (see `evit models`).",
                       json_schema_extra=cli(argument=True))
    weights: Path | None = Field(None, description="Checkpoint (.pt/.pth/.safetensors); without it, seeded random "
                                                   "weights (the figures then say nothing about accuracy).")
    targets: Names = Field(None, description="Targets, comma-separated (default: every target: onnx, tflite, coreml, "
                                             "trt).", json_schema_extra=cli("--targets", metavar="NAME[,NAME]",
                                                                            as_type=str))
    precisions: Names = Field(None, description="Precisions, comma-separated (default fp32,fp16,int8; each target "
                                                "runs those it supports).",
                              json_schema_extra=cli("--precisions", metavar="P[,P]", as_type=str))
    resolutions: Annotated[list[tuple[int, int]] | None, BeforeValidator(_resolutions)] = Field(
        None, description="HxW[,HxW...], multiples of 32 (default: the card's).",
        json_schema_extra=cli("--resolution", metavar="HxW[,HxW]", as_type=str))
    data: Path | None = Field(None, description="A labelled dataset (layouts as `evit eval`): each row's task metric "
                                                "and its drop against PyTorch.")
    calib: Path | None = Field(None, description="Folder of calibration images (int8 rows are skipped without it).")
    calib_samples: int | None = Field(None, ge=1, description="Calibration images to use.")
    images: Path | None = Field(None, description="Folder of images verify compares on (default: random inputs).")
    samples: int | None = Field(None, ge=1, description="Inputs verify compares (default 4, or every image).")
    device: str = Field("cpu", description="Where the artifacts run: cpu here and/or inventory devices "
                                           "NAME[,NAME...] over SSH; one row per device.")
    inventory: Path | None = Field(None, description="devices.yaml (default: $EVIT_DEVICES, else "
                                                     "~/.config/evit/devices.yaml).")
    threads: Threads = Field(None, description="Runtime threads (default: the runtime's).")
    warmup: int = Field(5, ge=0, description="Untimed runs before timing.")
    iters: int = Field(20, ge=1, description="Timed runs per row.")
    out: Path = Field(Path("benchmark"), description="Output folder: artifacts/ and the results (benchmark.json, "
                                                     ".csv, .md, PNG plots, JUnit XML).")
    force: bool = Field(False, description="Rebuild artifacts even where a matching one exists.")
    shard: Annotated[tuple[int, int] | None, BeforeValidator(_shard)] = Field(
        None, description="Run the I-th of N deterministic slices of the matrix (e.g. 1/4); `evit benchmark merge` "
                          "joins the slices' results.", json_schema_extra=cli(metavar="I/N", as_type=str))
    seed: Seed = Field(0, description="Seed of random weights (no --weights) and of the random inputs.")

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, value: list[str] | None) -> list[str] | None:
        known = [p.value for p in Precision]
        for name in value or []:
            if name.lower() not in known:
                raise UsageError(f"--precisions: {name!r} is not one of {', '.join(known)}")
        return None if value is None else list(dict.fromkeys(p.lower() for p in value))

    @model_validator(mode="after")
    def _drop_needs_data(self) -> Self:
        if self.max_drop is not None and self.data is None:
            raise UsageError("--max-drop bounds the accuracy drop measured on --data; give --data too")
        if self.data is None and (self.format is not None or self.limit is not None or self.classes is not None):
            raise UsageError("--format, --limit and --classes describe --data; give --data too")
        return self



class DebugRequest(Request):
    """``evit debug``: every layer of an artifact against its PyTorch module, by module path."""

    command: ClassVar[str] = "debug"

    artifact: Path = Field(description="An exported artifact (its .evit.json must be beside it).",
                           json_schema_extra=cli(argument=True))
    weights: Path | None = Field(None, description="Reference weights (default: those recorded at export).")
    images: Path | None = Field(None, description="Folder of images (or a .npy) instead of random inputs.")
    samples: int = Field(2, ge=1, description="Inputs to compare.")
    layers: str = Field("auto", description="auto: the model's own layers and blocks, one per computation; all: "
                                            "every mapped module, torch building blocks (BatchNorm, activations) "
                                            "included.")
    threshold: float | None = Field(None, gt=0, description="Relative L2 error over which a layer counts as divergent "
                                    "(default per precision: "
                                    + ", ".join(f"{k} {v:g}" for k, v in DEBUG_THRESHOLDS.items()) + ").")
    alone: bool = Field(True, description="Also run each layer alone on the reference's inputs: the error it "
                                          "adds by itself.")
    seed: Seed = Field(0, description="Seed of the random inputs.")
    threads: Threads = Field(None, description="Runtime threads.")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: str) -> str:
        if value not in LAYER_MODES:
            raise UsageError(f"--layers {value!r} is not known; use one of {', '.join(LAYER_MODES)}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _weights_of(value, info.data.get("artifact"))
