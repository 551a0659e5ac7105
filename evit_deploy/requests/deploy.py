"""The requests of the three core commands: export, verify, profile."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from evit_deploy.configs import Tolerances
from evit_deploy.errors import UsageError
from evit_deploy.requests.base import (
    UNBOUNDED,
    Request,
    Resolution,
    Seed,
    Threads,
    ZooModelRequest,
    _dims,
    _existing_file,
    _names,
    _path_text,
    _weights_of,
    cli,
)
from evit_deploy.sam import read_prompt_file
from evit_deploy.spec import Precision


class ExportRequest(ZooModelRequest):
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
    data: Path | None = Field(None, description="int8 with --max-drop: a labelled dataset folder (the layouts "
                                                "`evit eval` reads) to score candidates on.")
    data_format: str | None = Field(None, description="--data's layout: cityscapes, ade20k, masks or imagefolder "
                                                      "(default: detected).")
    data_limit: int | None = Field(None, ge=1, description="Score on the first N images of --data only.")
    data_classes: Path | None = Field(None, description="--data's classes YAML (masks) or index file (imagefolder).")
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
        data = {k: v for k, v in (("source", self.data), ("format", self.data_format), ("limit", self.data_limit),
                                  ("classes", self.data_classes)) if v is not None}
        options = dict(self.options)
        if options.get("max_drop") is not None:  # a recipe's --min-agreement gives way to --max-drop asked for here
            options.setdefault("min_agreement", None)
        return {"target": self.target, "precision": self.precision, "resolution": self.resolution,
                "batch": self.batch, "dynamic": self.dynamic, "calibration": calibration or None,
                "data": data or None, "options": options or None}


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
