"""The TensorRT target's recipe options, and every rule about combining them.

CLI flags arrive as strings (``--trt-version 10 --workspace 4 --min-shape 256x512``), YAML
recipes as typed values; both pass through ``TrtOptions``. Rules that involve more than one
field (DLA on TensorRT 11, min > max, weak typing on 11, ...) live in ``check_options`` so
the CLI refuses them before any model is built, with one line naming the flag.

Shape profiles: an image graph's input takes ``--min/opt/max-shape`` and ``--min/opt/max-batch``;
any other dynamic dim (a SAM decoder's prompts and points) takes ``--dim-profile
NAME=MIN:OPT:MAX``. ``resolve_profiles`` gives every dynamic input of a graph its min/opt/max
shape, each axis from its own dim.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from evit_deploy.accuracy_control import ControlOptions
from evit_deploy.contracts import comma_list
from evit_deploy.errors import UsageError

if TYPE_CHECKING:
    from evit_deploy.configs import Recipe
    from evit_deploy.spec import GraphInput, GraphIO, InputSpec

# The TensorRT releases a plan can target. JetPack 5 ships 8.5, JetPack 6.0 ships 8.6,
# JetPack 6.1/6.2 ship 10.3; datacenter wheels are 10.x and 11.x.
TRT_VERSIONS = ("8.5", "8.6", "10", "11")
# The highest ONNX opset each target's parser takes, per onnx-tensorrt's docs/operators.md of its
# releases: 8.5 and 8.6 "up to Opset 17"; 10.0 "opset 9 to opset 20" (later 10.x go higher, but a
# plan for "10" must parse on JetPack 6.1/6.2's 10.3); 11.x 24 (11.5 added opset 25).
PARSER_OPSET = {"8.5": 17, "8.6": 17, "10": 20, "11": 24}
EXPORTER_OPSET = 18  # what torch's dynamo exporter writes natively (it raises anything lower to 18)
MAX_EXPORT_OPSET = 23  # torch 2.13's dynamo exporter (torch.onnx._constants.ONNX_MAX_OPSET)
Typing = Literal["strong", "weak"]
_DIM_ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\d+):(\d+):(\d+)\s*$")


class TrtOptions(ControlOptions):
    """``options:`` of a ``target: trt`` recipe (CLI: ``--trt-version 10`` -> ``trt_version``); int8 accuracy
    control (``min_agreement``, measured on ONNX Runtime) from ``ControlOptions``."""

    trt_version: str = "10"
    typing: Typing | None = None  # None: strong on 10/11, weak on 8.x
    platform: Literal["generic", "jetson", "datacenter"] = "generic"
    workspace: float | None = Field(None, gt=0)  # GiB; None: TensorRT's default (the device's memory)
    dla_core: int | None = Field(None, ge=0)
    min_shape: str | None = None  # HxW, BxHxW or BxCxHxW
    opt_shape: str | None = None
    max_shape: str | None = None
    min_batch: int | None = Field(None, ge=1)
    opt_batch: int | None = Field(None, ge=1)
    max_batch: int | None = Field(None, ge=1)
    dim_profile: dict[str, tuple[int, int, int]] = Field(default_factory=dict)  # named dim -> min, opt, max
    timing_cache: Path | None = None
    builder_opt_level: int | None = Field(None, ge=0, le=5)
    plan_only: bool = False
    keep_fp32: list[Literal["attention", "layernorm", "resize"]] = Field(
        default_factory=lambda: ["attention", "layernorm", "resize"])
    opset: int | None = Field(None, ge=17)  # None: the exporter's 18, or the parser's ceiling below it (17 on 8.x)
    simplify: Literal["onnxslim", "onnxsim", "none"] = "none"
    calib_method: Literal["minmax", "entropy", "percentile"] = "percentile"
    quantize_ops: list[str] = Field(default_factory=lambda: ["Conv"])  # op types that get Q/DQ in int8
    overflow_check: bool = True
    overflow_samples: int = Field(2, ge=1)

    @field_validator("trt_version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> str:
        text = str(value).strip().lower().removeprefix("trt").removeprefix("tensorrt").strip()
        parts = text.split(".")
        major = parts[0]
        if major == "8" and len(parts) > 1 and parts[1] in ("5", "6"):
            return f"8.{parts[1]}"
        if major in ("10", "11"):
            return major
        raise PydanticCustomError("trt_version", "unknown TensorRT version '{value}'; choose one of {choices}",
                                  {"value": str(value), "choices": ", ".join(TRT_VERSIONS)})

    @field_validator("keep_fp32", "quantize_ops", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("dim_profile", mode="before")
    @classmethod
    def _dim_entries(cls, value: Any) -> Any:
        """``--dim-profile num_prompts=1:16:64,num_points=1:4:16`` (or the flag repeated) from the
        CLI; a YAML mapping ``{num_prompts: [1, 16, 64]}`` passes as it is. min <= opt <= max, all >= 1."""
        entries = value if isinstance(value, list) else [value] if isinstance(value, str) else None
        if entries is not None:
            value = {}
            for entry in (e for text in entries for e in str(text).split(",") if e.strip()):
                match = _DIM_ENTRY.match(entry)
                if match is None:
                    raise PydanticCustomError("dim_profile", "'{entry}' is not NAME=MIN:OPT:MAX "
                                              "(e.g. num_prompts=1:16:64)", {"entry": entry.strip()})
                value[match[1]] = tuple(int(v) for v in match.groups()[1:])
        if isinstance(value, dict):
            for name, sizes in value.items():
                if isinstance(sizes, (list, tuple)) and len(sizes) == 3 and all(isinstance(v, int) for v in sizes) \
                        and not (1 <= sizes[0] <= sizes[1] <= sizes[2]):
                    raise PydanticCustomError("dim_profile", "{name}: need 1 <= min <= opt <= max, got {sizes}",
                                              {"name": name, "sizes": ":".join(map(str, sizes))})
        return value

    @property
    def major(self) -> int:
        return int(self.trt_version.split(".")[0])

    @property
    def onnx_opset(self) -> int:
        """The opset the typed ONNX is written in."""
        return self.opset if self.opset is not None else min(EXPORTER_OPSET, PARSER_OPSET[self.trt_version])

    @property
    def typing_mode(self) -> Typing:
        if self.typing is not None:
            return self.typing
        return "weak" if self.major < 10 else "strong"


@dataclass(frozen=True)
class Profile:
    """The min/opt/max shapes one input takes in the optimization profile (NCHW for an image)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shape(text: str, flag: str) -> tuple[int | None, int, int]:
    """'512x1024' -> (None, 512, 1024); '8x512x1024' -> (8, 512, 1024); '8x3x512x1024' too."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not HxW (e.g. 512x1024), BxHxW or BxCxHxW") from None
    if len(values) == 2:
        batch, (h, w) = None, values
    elif len(values) == 3:
        batch, h, w = values
    elif len(values) == 4:
        batch, channels, h, w = values
        if channels != 3:
            raise UsageError(f"{flag} {text!r}: EfficientViT takes 3 channels, not {channels}")
    else:
        raise UsageError(f"{flag} {text!r} is not HxW (e.g. 512x1024), BxHxW or BxCxHxW")
    if batch is not None and batch < 1:
        raise UsageError(f"{flag} {text!r}: the batch must be at least 1")
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise UsageError(f"{flag} {text!r}: height and width must be positive multiples of 32 "
                         f"(EfficientViT downsamples 32x); try {max(32, round(h / 32) * 32)}x{max(32, round(w / 32) * 32)}")
    return batch, h, w


def _profile_requested(o: TrtOptions) -> bool:
    return bool(o.dim_profile) or any(v is not None for v in (o.min_shape, o.opt_shape, o.max_shape, o.min_batch,
                                                               o.opt_batch, o.max_batch))


def check_options(options: TrtOptions, recipe: Recipe) -> None:
    """Refuse combinations TensorRT cannot honour, each with one line naming the flag."""
    major = options.major
    if options.typing == "weak" and major >= 11:
        raise UsageError("TensorRT 11 removed weak typing (--fp16, --int8, precision constraints): "
                         "drop --typing weak (the typed ONNX carries the precisions) or use --trt-version 10")
    if options.typing == "strong" and major < 10:
        raise UsageError(f"TensorRT {options.trt_version} has no strongly typed networks: use --typing weak, "
                         "or --trt-version 10 (JetPack 6.1+)")
    if options.dla_core is not None:
        # TensorRT 10.7 was the last 10.x with DLA (JetPack 6 ships 10.3); 11.0-11.4.0 had none and 11.4.1
        # brought it back on Jetson AGX Orin under JetPack 7.2.2+, strongly typed (checked at build time).
        if options.platform != "jetson":
            raise UsageError(f"--dla-core: DLA exists only on Jetson, but this recipe is for the {options.platform!r} "
                             "platform; use --config trt-fp16-orin (or --platform jetson) or drop --dla-core")
        if recipe.precision == "fp32":
            raise UsageError("--dla-core: DLA runs fp16 or int8 only; use --precision fp16 or int8")
    parser = PARSER_OPSET[options.trt_version]
    if options.opset is not None and options.opset > min(parser, MAX_EXPORT_OPSET):
        raise UsageError(f"--opset {options.opset}: TensorRT {options.trt_version}'s ONNX parser takes opsets up to "
                         f"{parser} and torch's exporter writes up to {MAX_EXPORT_OPSET}; drop --opset "
                         f"(evit writes {min(EXPORTER_OPSET, parser)}) or choose another --trt-version")
    if options.builder_opt_level is not None and options.trt_version == "8.5":
        raise UsageError("--builder-opt-level arrived in TensorRT 8.6; drop it for --trt-version 8.5")
    if options.timing_cache is not None and options.timing_cache.is_dir():
        raise UsageError(f"--timing-cache {options.timing_cache}: a folder; give a file (created if missing)")
    if _profile_requested(options):
        if not recipe.dynamic:
            raise UsageError("--min-shape/--opt-shape/--max-shape (and --*-batch, --dim-profile) need a dynamic ONNX: "
                             "add --dynamic")
        if options.dla_core is not None:
            raise UsageError("--dla-core: DLA engines take static shapes only; drop the shape profile or --dla-core")
    shapes = {flag: parse_shape(text, flag) for flag, text in
              (("--min-shape", options.min_shape), ("--opt-shape", options.opt_shape), ("--max-shape", options.max_shape))
              if text is not None}
    _check_order(shapes, options)


def _check_order(shapes: dict[str, tuple[int | None, int, int]], options: TrtOptions) -> None:
    """min <= opt <= max, per dimension, wherever two of them are given."""
    order = ["--min-shape", "--opt-shape", "--max-shape"]
    given = [(flag, shapes[flag]) for flag in order if flag in shapes]
    for (fa, a), (fb, b) in pairwise(given):
        if a[1] > b[1] or a[2] > b[2]:
            raise UsageError(f"{fa} {a[1]}x{a[2]} is larger than {fb} {b[1]}x{b[2]}: "
                             "need min <= opt <= max in height and in width")
        if a[0] is not None and b[0] is not None and a[0] > b[0]:
            raise UsageError(f"{fa} batch {a[0]} is larger than {fb} batch {b[0]}: need min <= opt <= max")
    batches = [(f, v) for f, v in (("--min-batch", options.min_batch), ("--opt-batch", options.opt_batch),
                                   ("--max-batch", options.max_batch)) if v is not None]
    for (fa, a), (fb, b) in pairwise(batches):
        if a > b:
            raise UsageError(f"{fa} {a} is larger than {fb} {b}: need min <= opt <= max")


def resolve_profile(options: TrtOptions, spec: InputSpec) -> Profile | None:
    """The optimization profile of a dynamic export (None for a static one).

    Unset sizes default to the export resolution; unset batches to 1 (min) and the recipe's
    batch (opt, max). The export resolution and batch must lie inside the profile.
    """
    if not spec.dynamic:
        return None
    sizes = {}
    for key, text in (("min", options.min_shape), ("opt", options.opt_shape), ("max", options.max_shape)):
        sizes[key] = parse_shape(text, f"--{key}-shape") if text is not None else (None, spec.height, spec.width)
    batches = {
        "min": options.min_batch or sizes["min"][0] or 1,
        "opt": options.opt_batch or sizes["opt"][0] or spec.batch,
        "max": options.max_batch or sizes["max"][0] or max(spec.batch, options.opt_batch or sizes["opt"][0] or 1),
    }
    dims = {k: (batches[k], 3, sizes[k][1], sizes[k][2]) for k in sizes}
    for k_lo, k_hi in (("min", "opt"), ("opt", "max"), ("min", "max")):
        lo, hi = dims[k_lo], dims[k_hi]
        if any(a > b for a, b in zip(lo, hi)):
            raise UsageError(f"the {k_lo} shape {_fmt(lo)} is larger than the {k_hi} shape {_fmt(hi)} "
                             "(unset sizes default to the export resolution): need min <= opt <= max")
    example = spec.shape
    if any(e < lo or e > hi for e, lo, hi in zip(example, dims["min"], dims["max"])):
        raise UsageError(f"the export shape {_fmt(example)} lies outside the profile {_fmt(dims['min'])} .. "
                         f"{_fmt(dims['max'])}; change --resolution/--batch or the profile")
    return Profile(dims["min"], dims["opt"], dims["max"])


def check_dims(options: TrtOptions, dims: dict[str, tuple[int, int]]) -> None:
    """Every ``--dim-profile`` name is a dynamic dim of the exported graphs (``dims``: name -> the
    range the model takes), and its min/max lie in that range; checked before anything is written."""
    for name, (low, _, high) in options.dim_profile.items():
        if name not in dims:
            known = ", ".join(sorted(dims)) or "none besides the image's (use --min/opt/max-shape and --*-batch)"
            raise UsageError(f"--dim-profile {name}: no dynamic dim of that name in the exported graph(s); "
                             f"their dims: {known}")
        lo, hi = dims[name]
        if low < lo or high > hi:
            raise UsageError(f"--dim-profile {name}={low}:..:{high} leaves the range the model takes ({lo}..{hi})")


def resolve_profiles(options: TrtOptions, spec: InputSpec, io: GraphIO, image_graph: bool) -> dict[str, Profile]:
    """Every dynamic input's min/opt/max shape (empty for a static graph), axis by axis.

    An image graph's input takes the image flags (``resolve_profile``); other dynamic dims take
    ``--dim-profile`` (``batch`` also the ``--*-batch`` flags), else min = the dim's lowest size and
    opt = max = the export size. An axis that is not dynamic stays at its export size: the image
    flags may not move it (a SAM encoder's 512x512 is fixed; only its batch varies).
    """
    profiles: dict[str, Profile] = {}
    for tensor in io.inputs:
        if not tensor.dynamic:
            continue
        if image_graph:
            image = resolve_profile(options, spec)
            assert image is not None  # a dynamic input means a dynamic recipe
            profiles[tensor.name] = _only_dynamic_axes(tensor, image)
            continue
        sizes = [_dim_sizes(options, tensor, axis) for axis in range(len(tensor.shape))]
        profiles[tensor.name] = Profile(*(tuple(s[k] for s in sizes) for k in range(3)))
    return profiles


def _dim_sizes(options: TrtOptions, tensor: GraphInput, axis: int) -> tuple[int, int, int]:
    dim = next((d for d in tensor.dynamic if d.axis == axis), None)
    size = tensor.shape[axis]
    if dim is None:
        return size, size, size
    if dim.name in options.dim_profile:
        return options.dim_profile[dim.name]
    if dim.name == "batch":
        low = options.min_batch or dim.min
        opt = options.opt_batch or size
        return low, opt, options.max_batch or max(opt, size)
    return dim.min, size, size


def _only_dynamic_axes(tensor: GraphInput, image: Profile) -> Profile:
    """The image profile, refused where it moves an axis the graph has fixed."""
    dynamic = {d.axis for d in tensor.dynamic}
    for axis, size in enumerate(tensor.shape):
        if axis in dynamic:
            continue
        for key, shape in (("min", image.min), ("opt", image.opt), ("max", image.max)):
            if shape[axis] != size:
                what = {0: "batch", 1: "channels", 2: "height", 3: "width"}.get(axis, f"axis {axis}")
                raise UsageError(f"the {key} shape {_fmt(shape)} changes the {what} of {tensor.name}, which is fixed at "
                                 f"{size} in this graph (its dynamic dims: {', '.join(d.name for d in tensor.dynamic)})")
    return image


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)
