"""One request object per command, shared by the CLI, the Python API and the remote worker.

A field here is the whole declaration of a flag: its type and bounds, its default, its help
text and its flag names. The CLI builds its options from these fields
(``evit_deploy.cli._requests``), the API validates its keyword arguments through them, and the
worker receives them as JSON, so a new flag is declared once and all three agree on what is
valid. A bad value is a ``UsageError`` whose line names the flag, the same for every caller.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from evit_deploy.configs import Tolerances, parse_resolution
from evit_deploy.errors import UsageError
from evit_deploy.sam import POINT_LABELS, read_prompt_file
from evit_deploy.spec import Precision

UNBOUNDED = 2**31  # an image size no prompt reaches: checks a prompt file's form before the images are known


def _resolution(value: Any) -> Any:
    """``"512x1024"``, ``"224"`` or ``(512, 1024)`` -> (H, W), checked like the CLI checks it."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_resolution(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                      for v in value):
        return parse_resolution(f"{value[0]}x{value[1]}")
    raise UsageError(f"--resolution takes HxW (e.g. 512x1024 or (512, 1024)), got {value!r}")


Resolution = Annotated[tuple[int, int] | None, BeforeValidator(_resolution)]


def _names(value: Any) -> Any:
    """``"encoder,decoder"`` -> ["encoder", "decoder"] (a list passes as it is)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()] or None
    return value


def _dims(value: Any) -> Any:
    """``"num_prompts=16,num_points=4"`` -> {"num_prompts": 16, "num_points": 4} (a mapping passes as it is)."""
    if not isinstance(value, str):
        return value
    dims: dict[str, Any] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, sep, size = part.partition("=")
        if not sep or not name.strip() or not size.strip().isdigit():
            raise UsageError(f"--dims {value!r}: give NAME=SIZE pairs, e.g. num_prompts=16,num_points=4")
        dims[name.strip()] = int(size)
    return dims


def _path_text(value: Any) -> Any:
    """A path given as ``Path`` or text (an artifact, or a zoo name where the command takes one)."""
    return str(value) if isinstance(value, Path) else value


def cli(*flags: str, argument: bool = False, metavar: str | None = None, hidden: bool = False,
        as_type: type | None = None) -> dict[str, Any]:
    """How a field appears on the command line (``json_schema_extra`` of its ``Field``).

    ``flags``: the option names (default ``--field-name``); ``argument``: positional;
    ``hidden``: API only (not a flag); ``as_type``: the type the CLI parses before the request
    validates (``str`` for a resolution or a precision, so the request's message is the one shown).
    """
    return {"cli": {"flags": list(flags), "argument": argument, "metavar": metavar, "hidden": hidden,
                    "as_type": as_type}}


def flag_of(model: type[BaseModel], name: str) -> str:
    """The flag a field is given with (``threads`` -> ``--threads``), for messages."""
    field = model.model_fields.get(name)
    extra = (field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}) or {}
    spec = extra.get("cli", {})
    if spec.get("argument"):
        return spec.get("metavar") or name.upper()
    flags = [f for f in spec.get("flags", []) if f.startswith("--")]
    return flags[0].split("/")[0] if flags else "--" + name.replace("_", "-")


class Request(BaseModel):
    """Validated once, immutable after: what a command was asked to do."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    command: ClassVar[str] = ""

    @classmethod
    def parse(cls, **fields: Any) -> Self:
        """Keyword arguments (the API's, or the CLI's parsed options) -> a request, or one UsageError line."""
        try:
            return cls.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as err:
            raise UsageError(describe_error(err, cls)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated again."""
        return type(self).parse(**{**self.model_dump(), **changes})



def describe_error(err: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's first complaint as one line naming the flag, e.g. ``--threads must be at least 1 (got 0)``."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    kind, value, ctx = first["type"], first.get("input"), first.get("ctx") or {}
    command = getattr(model, "command", "") or "this command"
    if kind == "extra_forbidden":
        return f"unknown option {loc[-1]!r} for {command}; see `evit {command} --help`"
    if kind == "missing":
        return f"{command} needs {flag_of(model, loc[0]) if loc else 'more arguments'}; see `evit {command} --help`"
    sub = model.model_fields[loc[0]].annotation if loc and loc[0] in model.model_fields else None
    if len(loc) > 1 and isinstance(sub, type) and issubclass(sub, BaseModel):
        flag = flag_of(sub, loc[1])
    else:
        flag = flag_of(model, loc[0]) if loc else command
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return f"{flag} must be {'at least' if kind == 'greater_than_equal' else 'more than'} {bound} (got {shown})"
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return f"{flag} must be {'at most' if kind == 'less_than_equal' else 'less than'} {bound} (got {shown})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{flag} takes a whole number, got {shown}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"{flag} takes a number, got {shown}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{flag} takes true or false, got {shown}"
    if kind in ("string_type",):
        return f"{flag} takes text, got {type(value).__name__} {shown}"
    if kind in ("path_type",):
        return f"{flag} takes a path, got {type(value).__name__} {shown}"
    if kind == "enum":
        return f"{flag} {shown} is not one of {ctx.get('expected', '')}"
    if kind in ("dict_type", "model_type"):
        return f"{flag} takes a mapping of fields, got {type(value).__name__}"
    return f"{flag}: {first['msg']}"


def _existing_file(path: Path | None, flag: str, what: str) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a folder, not a {what} file; pass the file itself")
    if not path.is_file():
        raise UsageError(f"{path}: {what} file not found")
    return path


def _weights_of(path: Path | None, model: Any) -> Path | None:
    """``--weights`` of a zoo model: a missing file names where the model's official checkpoint is.

    A newcomer's first command names the official file they do not have yet; "not found" alone
    leaves them searching (issue 17)."""
    if path is not None and not path.exists() and isinstance(model, str):
        from evit_deploy import zoo

        try:
            source = zoo.get_card(model).checkpoint_source()
        except UsageError:
            source = None
        if source is not None:
            raise UsageError(f"{path}: weights file not found; {source}; or leave out --weights to try {model} "
                             "with random weights")
    return _existing_file(path, "--weights", "weights")


Seed = Annotated[int, Field(ge=0)]
LAYER_MODES = ("auto", "all")  # evit debug --layers
# Relative L2 a healthy artifact of each precision stays under at every layer (seg-B1 and cls-B0,
# seeded weights, photos; see tests/debug). Over it, something is wrong, or int8 is lossy there.
DEBUG_THRESHOLDS = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.3}
Threads = Annotated[int | None, Field(ge=1)]


class ExportRequest(Request):
    """``evit export``: a zoo model (with its checkpoint) becomes an artifact and its manifest."""

    command: ClassVar[str] = "export"

    model: str = Field(description="Zoo name, e.g. efficientvit-seg-b1-cityscapes (see `evit models`).",
                       json_schema_extra=cli(argument=True))
    target: str | None = Field(None, description="onnx, tflite, coreml, trt.",
                               json_schema_extra=cli("--target", "-t"))
    weights: Path | None = Field(None, description="Checkpoint (.pt/.pth/.safetensors, official or timm layout).")
    precision: Precision | None = Field(None, description="fp32, fp16 or int8.", json_schema_extra=cli(as_type=str))
    resolution: Resolution = Field(None, description="HxW, multiples of 32 (default: the card's).",
                                   json_schema_extra=cli(metavar="HxW", as_type=str))
    batch: int | None = Field(None, ge=1, description="Batch size (static, or the example for --dynamic).")
    dynamic: bool | None = Field(None, description="Dynamic batch/height/width.",
                                 json_schema_extra=cli("--dynamic/--static"))
    config: str | None = Field(None, description="Recipe YAML path or shipped recipe name (export_configs/).")
    calib: Path | None = Field(None, description="Folder of calibration images (int8).")
    calib_samples: int | None = Field(None, ge=1, description="Calibration images to use.")
    out: Path = Field(Path("out"), description="Output folder.")
    device: str | None = Field(
        None, description="An inventory device: its preset picks the default target and precision; for trt the "
                          "engine is built there (plan here, engine and manifest copied back).")
    inventory: Path | None = Field(None, description="devices.yaml (default: $EVIT_DEVICES, else "
                                                     "~/.config/evit/devices.yaml).")
    name: str | None = Field(None, description="File stem of the artifact (default: the model name).")
    graphs: Annotated[list[str] | None, BeforeValidator(_names)] = Field(
        None, description="Graphs to export of a model that deploys as several (e.g. encoder,decoder; default: all).",
        json_schema_extra=cli("--graph", metavar="NAME[,NAME]", as_type=str))
    seed: Seed = Field(0, description="Seed for random weights when no --weights is given.")
    options: dict[str, Any] = Field(default_factory=dict, description="Target options (after the others).",
                                    json_schema_extra=cli(hidden=True))

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not value.strip():
            raise UsageError("MODEL is empty; give a zoo name (see `evit models`)")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _weights_of(value, info.data.get("model"))

    @field_validator("name")
    @classmethod
    def _stem(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or value in (".", "..") or any(c in value for c in "/\\\0") or value.startswith("-"):
            raise UsageError(f"--name {value!r} is not a file stem: it names the artifact inside --out, so it "
                             "cannot be empty, contain / or \\, or start with '-'; put folders in --out")
        return value

    def overrides(self) -> dict[str, Any]:
        """The recipe fields this request sets (None: the recipe's or the default)."""
        calibration = {k: v for k, v in (("source", self.calib), ("samples", self.calib_samples)) if v is not None}
        return {"target": self.target, "precision": self.precision, "resolution": self.resolution,
                "batch": self.batch, "dynamic": self.dynamic, "calibration": calibration or None,
                "options": self.options or None}


class VerifyRequest(Request):
    """``evit verify``: the artifact against its PyTorch reference, on the same inputs."""

    command: ClassVar[str] = "verify"

    artifact: Path = Field(description="An exported artifact (its .evit.json must be beside it).",
                           json_schema_extra=cli(argument=True))
    weights: Path | None = Field(None, description="Reference weights (default: those recorded at export).")
    images: Path | None = Field(None, description="Folder of images (or a .npy) instead of random inputs.")
    samples: int | None = Field(None, ge=1, description="Inputs to compare (default 4, or every image).")
    prompts: Path | None = Field(None, description="SAM: a JSON prompt file (points, labels, boxes in each image's "
                                                   "pixels) instead of a generated grid of clicks and boxes.",
                                 json_schema_extra=cli(metavar="FILE.json"))
    tolerances: Tolerances = Field(default_factory=Tolerances,
                                   description="Criteria overriding the recipe's (each is also a flag).")
    resolution: Resolution = Field(None, description="HxW to verify a dynamic artifact at.",
                                   json_schema_extra=cli(metavar="HxW", as_type=str))
    seed: Seed = Field(0, description="Seed of the random inputs.")
    device: str = Field("cpu", description="Where the artifact runs: cpu or cuda here, or an inventory device "
                                           "NAME[:RUNTIME] over SSH (inputs and the PyTorch reference stay here).")
    inventory: Path | None = Field(None, description="devices.yaml (default: $EVIT_DEVICES, else "
                                                     "~/.config/evit/devices.yaml).")
    threads: Threads = Field(None, description="Runtime threads.")
    weight_rounding: bool = Field(True, description="For fp16/int8: also score the reference with only its "
                                                    "weights rounded to that precision, which tells a shortfall of "
                                                    "the precision from one of the export.")
    record: bool = Field(True, description="Keep the result in the artifact's manifest.",
                         json_schema_extra=cli(hidden=True))

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None) -> Path | None:
        return _existing_file(value, "--weights", "weights")

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: Path | None) -> Path | None:
        """Read once here, so a malformed file is refused before any work (each image checks its bounds)."""
        if _existing_file(value, "--prompts", "prompt") is not None:
            read_prompt_file(value, (UNBOUNDED, UNBOUNDED))
        return value


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


class ProfileRequest(Request):
    """``evit profile``: latency, throughput and memory of an artifact (or eager PyTorch)."""

    command: ClassVar[str] = "profile"

    artifact: Annotated[str, BeforeValidator(_path_text)] = Field(
        description="An exported artifact, or a zoo model name with --target torch.", json_schema_extra=cli(argument=True))
    target: str | None = Field(None, description="'torch' to time a zoo model in eager PyTorch.")
    weights: Path | None = Field(None, description="Weights for --target torch.")
    device: str = Field("cpu", description="Where to run: cpu or cuda here, or inventory devices NAME[,NAME...] "
                                           "over SSH, in parallel (NAME:cpu picks the runtime device there; see "
                                           "`evit devices`).")
    inventory: Path | None = Field(None, description="devices.yaml (default: $EVIT_DEVICES, else "
                                                     "~/.config/evit/devices.yaml).")
    threads: Threads = Field(None, description="Runtime threads (default: the runtime's).")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing.")
    iters: int = Field(50, ge=1, description="Timed runs.")
    batch: int | None = Field(None, ge=1, description="Batch (dynamic artifacts only).")
    resolution: Resolution = Field(None, description="HxW (dynamic artifacts and --target torch).",
                                   json_schema_extra=cli(metavar="HxW", as_type=str))
    per_layer: bool = Field(False, description="Top operators from the runtime's profiler.")
    lock_clocks: bool = Field(False, description="Jetson: run jetson_clocks for the measurement, then restore "
                                                 "the clocks.")
    power: bool = Field(False, description="Jetson: sample module power (tegrastats) during the timed runs: "
                                           "mean W, mJ/image.")
    seed: Seed = Field(0, description="Seed of the random input.")
    dims: Annotated[dict[str, Annotated[int, Field(ge=1)]], BeforeValidator(_dims)] = Field(
        default_factory=dict, description="Sizes of a graph's named dynamic dims, e.g. num_prompts=16,num_points=4 "
                                          "(SAM's decoder; a bundle is timed at its card's profile sizes).",
        json_schema_extra=cli(metavar="NAME=SIZE[,NAME=SIZE]", as_type=str))
    graph: str | None = Field(None, description="With --target torch: the graph of a several-graph model to time "
                                                "(e.g. encoder, decoder; default: the first).")

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _weights_of(value, info.data.get("artifact"))


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


class BenchmarkRequest(LabelledData):
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

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not value.strip():
            raise UsageError("MODEL is empty; give a zoo name (see `evit models`)")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _weights_of(value, info.data.get("model"))

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


__all__ = ["BenchmarkRequest", "DebugRequest", "EvalRequest", "ExportRequest", "LabelledData", "ProfileRequest",
           "Request", "Resolution", "SegmentRequest", "VerifyRequest", "cli", "describe_error", "flag_of"]
