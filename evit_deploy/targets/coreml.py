"""Core ML: coremltools (torch.export -> ML program ``.mlpackage``); runs on macOS, checked anywhere.

Export goes through ``torch.export`` + ``run_decompositions({})`` (coremltools' supported path
for exported programs). Three things need care, each measured with coremltools 9.0:

* **Bicubic upsampling** (the seg head): coremltools has no lowering for ``upsample_bicubic2d``
  (conversion stops with NotImplementedError, on both the trace and the export path). The
  shared exact rewrite ``evit_deploy.convert.bicubic`` (edge pad + depthwise 5x5 + pixel
  shuffle) is applied to a copy of the model first; its filter banks are kept out of weight
  compression so the resize stays exact.
* **fp16**: LiteMLA's token sums overflow fp16 on trained weights and its eps (1e-15) is 0 in
  fp16, so under fp16 the attention (and the bicubic resize, fp32 in the official code) stays
  fp32: ``FP16ComputePrecision(op_selector=...)`` picks ops by the Python source they were
  traced from, and the saved program is then checked op by op; if the converter did not honour
  the request, export fails rather than ship an artifact that overflows on device.
* **Image input** (``--image-input``): Core ML's ImageType applies ``scale * pixel + bias`` with
  ONE scale for all channels, so the card's per-channel normalisation cannot be folded into it
  exactly. evit sets ``scale = 1/255`` and ``bias = -mean`` (per channel) and puts the
  per-channel ``1/std`` into the model as a multiply before the first conv. An app passes the
  camera frame (CVPixelBuffer / CGImage, RGB) as is.

Running: on macOS the runner is ``MLModel.predict`` with the recipe's compute units (or those
given as ``--device``). coremltools 9.0 loads a program newer than the OS without complaint
(no proxy; its first ``predict`` raises a bare Exception), so the runner checks after loading and
refuses in one line naming the macOS the artifact needs. Where the ops ran is read from Core ML's
compute plan (``MLComputePlan``, per-device op counts in ``describe()``), and a run on the GPU or
Neural Engine, which compute in fp16, is held to the recipe's ``accelerated`` tolerances.
Elsewhere ``verify`` runs the ML program with evit's MIL interpreter
(``evit_deploy.mil``, numpy): it checks what the converter wrote, not Apple's kernels, and its
timings mean nothing, so ``profile`` refuses there. ``EVIT_COREML_RUNNER=mil`` forces the
interpreter on macOS too (to compare both).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import platform
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from evit_deploy.configs import validate_options
from evit_deploy.errors import CheckFailed, RuntimeMissing, ToolchainError, UsageError
from evit_deploy.spec import InputSpec, TensorInfo
from evit_deploy.targets.base import (
    ExportContext,
    ExportOutput,
    Runner,
    Target,
    TargetOptions,
    missing_modules,
    register,
)

if TYPE_CHECKING:
    import torch

    from evit_deploy.artifact import Manifest
    from evit_deploy.configs import Recipe

INSTALL_HINT = "pip install 'evit-deploy[coreml]'"

COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE"}
_UNIT_ALIASES = {"cpu": "cpu_only", "gpu": "cpu_and_gpu", "ne": "cpu_and_ne", "ane": "cpu_and_ne",
                 "cpuandgpu": "cpu_and_gpu", "cpuandne": "cpu_and_ne", "cpuandneuralengine": "cpu_and_ne",
                 "cpuonly": "cpu_only"}

# Deployment targets -> the iOS release with the same Core ML specification (coremltools'
# AvailableTarget aliases). ML programs exist from iOS15 / macOS12 / tvOS15 / watchOS8.
_OS_LEVELS: dict[str, dict[str, int]] = {
    "iOS": {str(v): v for v in (13, 14, 15, 16, 17, 18, 26)},
    "macOS": {"10_15": 13, "10_16": 14, "11": 14, "12": 15, "13": 16, "14": 17, "15": 18, "26": 26},
    "tvOS": {str(v): v for v in (13, 14, 15, 16, 17, 18, 26)},
    "watchOS": {"6": 13, "7": 14, "8": 15, "9": 16, "10": 17, "11": 18, "26": 26},
}
MLPROGRAM_MIN = 15
# Core ML specification version -> the first macOS that runs it (coremltools' _SPECIFICATION_VERSION_IOS_*:
# 6 = iOS15/macOS12 ... 9 = iOS18/macOS15, 10 = iOS26/macOS26).
SPEC_MACOS = {6: "12", 7: "13", 8: "14", 9: "15", 10: "26"}
# Compute plan device classes (coremltools.models.compute_device) -> the names reports use.
DEVICE_KINDS = {"MLCPUComputeDevice": "cpu", "MLGPUComputeDevice": "gpu", "MLNeuralEngineComputeDevice": "neural_engine"}
COMPRESSION_MIN = 16  # constexpr_* weight ops arrived with iOS16 / macOS13
GROUPED_PALETTE_MIN = 18  # per-grouped-channel LUTs arrived with iOS18 / macOS15
PALETTE_GROUP = 16  # output channels sharing one LUT from iOS18 on

# fp32 islands under fp16, recognised by the source they were traced from (EXIR stack traces).
ISLANDS = {
    "attention": re.compile(r"\brelu_(linear|quadratic)_att\b"),  # the call line or the frame
    "upsample": re.compile(r"[/\\]convert[/\\]bicubic\.py\"|F\.interpolate\("),
}


def _canonical_target(value: str) -> tuple[str, int]:
    text = str(value).strip().replace(".", "_")
    match = re.fullmatch(r"(?i)(ios|macos|tvos|watchos)\s*(\d+(?:_\d+)?)", text)
    if match:
        family = {"ios": "iOS", "macos": "macOS", "tvos": "tvOS", "watchos": "watchOS"}[match.group(1).lower()]
        version = match.group(2)
        levels = _OS_LEVELS[family]
        if version in levels:
            return f"{family}{version}", levels[version]
    known = ", ".join(f"{f}{v}" for f, levels in _OS_LEVELS.items() for v in levels if levels[v] >= MLPROGRAM_MIN)
    raise PydanticCustomError("deployment_target", "unknown deployment target {value}; choose one of {known}",
                              {"value": repr(value), "known": known})


def deployment_level(target: str) -> int:
    return _canonical_target(target)[1]


class CoreMLOptions(TargetOptions):
    compute_units: str = "all"  # a load-time choice: recorded in metadata, used by the macOS runner
    deployment_target: str = "iOS17"
    image_input: bool = False
    compress: Literal["none", "palettize4", "palettize6", "palettize8", "int8"] = "none"
    keep_fp32: list[Literal["attention", "upsample"]] = Field(  # fp32 islands under fp16
        default_factory=lambda: ["attention", "upsample"])

    @field_validator("compute_units", mode="before")
    @classmethod
    def _units(cls, value: Any) -> str:
        key = str(value).strip().lower().replace("-", "_")
        key = _UNIT_ALIASES.get(key.replace("_", ""), key) if key not in COMPUTE_UNITS else key
        if key not in COMPUTE_UNITS:
            raise PydanticCustomError(
                "compute_units", "unknown compute unit {value}; choose one of {allowed}",
                {"value": repr(value), "allowed": ", ".join(COMPUTE_UNITS)},
            )
        return key

    @field_validator("deployment_target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> str:
        name, level = _canonical_target(value)
        if level < MLPROGRAM_MIN:
            raise PydanticCustomError(
                "deployment_target",
                "deployment target {value} is too old for an ML program (.mlpackage), which needs iOS15, "
                "macOS12, tvOS15 or watchOS8 or newer; use e.g. --deployment-target iOS17 (the default)",
                {"value": name},
            )
        return name

    @field_validator("keep_fp32", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def level(self) -> int:
        return deployment_level(self.deployment_target)


def _coremltools_missing() -> str | None:
    return missing_modules(INSTALL_HINT, "coremltools")


def macos_runtime_missing() -> str | None:
    """None where ``MLModel.predict`` works (macOS with coremltools' native runtime)."""
    if sys.platform != "darwin":
        return f"Core ML runs only on macOS/iOS (this is {platform.system()})"
    missing = _coremltools_missing()
    if missing:
        return missing
    import importlib.util

    if importlib.util.find_spec("coremltools.libcoremlpython") is None:
        return "this coremltools build has no Core ML runtime (libcoremlpython)"
    return None


@contextmanager
def _quiet_coremltools() -> Iterator[io.StringIO]:
    """coremltools' chatter (torchao load failures, torch version, tqdm bars) stays off stderr.

    Failures still surface: as exceptions, which the export turns into one line (with the
    converter's own ERROR line from the captured text, which names the op that failed).
    """
    for name in ("coremltools", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    captured = io.StringIO()
    with warnings.catch_warnings(), redirect_stderr(captured):
        warnings.simplefilter("ignore")
        yield captured


def _import_coremltools() -> Any:
    missing = _coremltools_missing()
    if missing:
        raise RuntimeMissing(missing)
    with _quiet_coremltools():
        import coremltools

    return coremltools


# --------------------------------------------------------------------------- export helpers


def _normalising_wrapper(model: torch.nn.Module, std: tuple[float, float, float]) -> torch.nn.Module:
    """``model(x / std)``: the per-channel part of the normalisation ImageType cannot express."""
    import torch

    class DivideByStd(torch.nn.Module):
        inv_std: torch.Tensor

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("inv_std", (1.0 / torch.tensor(std, dtype=torch.float32)).reshape(1, 3, 1, 1),
                                 persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x * self.inv_std)

    return DivideByStd(model)


def replace_tanh_gelu(model: torch.nn.Module) -> int:
    """Swap ``nn.GELU(approximate="tanh")`` for the explicit formula, in place; returns how many.

    coremltools 9.0's torch.export frontend reads ``approximate`` only as a positional argument,
    but exported graphs pass it as a keyword: tanh-GELU silently becomes erf-GELU (~1e-4 per
    op; the L-series were trained with tanh). The formula converts to plain elementwise ops.
    """
    import math

    import torch

    class TanhGelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    swapped = 0
    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.GELU) and sub.approximate == "tanh":
                setattr(child, attr, TanhGelu())
                swapped += 1
    return swapped


def _island_selector(keep: list[str]) -> tuple[Any, dict[str, int]]:
    """An ``op_selector`` for FP16ComputePrecision: False (stay fp32) for ops traced from an island."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    kept: dict[str, int] = {kind: 0 for kind in keep}

    def select(op: Any) -> bool:
        trace = (getattr(op, "scopes", None) or {}).get(ScopeSource.EXIR_STACK_TRACE) or []
        text = "\n".join(str(t) for t in trace if t)
        for kind in keep:
            if ISLANDS[kind].search(text):
                if op.op_type != "const":
                    kept[kind] += 1
                return False
        return True

    return select, kept


def _kmeans_lut(nbits: int) -> Any:
    """A palettizer ``lut_function``: exact 1-D k-means (coremltools' bundled kmeans1d), no scikit-learn."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    def lut_function(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lut, indices = _get_kmeans_lookup_table_and_weight(nbits, weight, force_kmeans1d=True)
        return np.asarray(lut).astype(weight.dtype), np.asarray(indices).astype(np.uint8)

    return lut_function


def _bicubic_convs(mlmodel: Any) -> list[str]:
    """Names of conv ops whose weights are a ``BicubicUpsample`` filter bank (kept uncompressed)."""
    from evit_deploy.convert.bicubic import BicubicUpsample

    banks: dict[int, np.ndarray] = {}
    names = []
    for op in mlmodel._mil_program.functions["main"].operations:
        if op.op_type != "conv":
            continue
        weight = op.weight.val
        if weight is None or weight.ndim != 4 or weight.shape[1:] != (1, 5, 5):
            continue
        for factor in (2, 3, 4, 8):
            bank = banks.setdefault(factor, BicubicUpsample(factor).kernel.numpy())
            if weight.shape[0] % bank.shape[0] == 0 and np.allclose(
                    weight.astype(np.float32), np.tile(bank, (weight.shape[0] // bank.shape[0], 1, 1, 1)), atol=1e-3):
                names.append(op.name)
                break
    return names


def _compress(ct: Any, mlmodel: Any, how: str, level: int) -> tuple[Any, dict[str, Any]]:
    from coremltools.optimize import coreml as cto

    exclude = _bicubic_convs(mlmodel)
    if how.startswith("palettize"):
        nbits = int(how.removeprefix("palettize"))
        grouped = level >= GROUPED_PALETTE_MIN
        config = cto.OpPalettizerConfig(
            mode="custom", lut_function=_kmeans_lut(nbits),
            granularity="per_grouped_channel" if grouped else "per_tensor", group_size=PALETTE_GROUP,
        )
        summary = {"method": "palettize", "nbits": nbits, "clustering": "k-means (1-D, exact)",
                   "granularity": f"per_grouped_channel ({PALETTE_GROUP} channels)" if grouped else "per_tensor"}
        compressed = cto.palettize_weights(
            mlmodel, cto.OptimizationConfig(global_config=config, op_name_configs={n: None for n in exclude}))
    else:
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        summary = {"method": "linear_quantize_weights", "dtype": "int8", "mode": "linear_symmetric",
                   "granularity": "per_channel"}
        compressed = cto.linear_quantize_weights(
            mlmodel, cto.OptimizationConfig(global_config=config, op_name_configs={n: None for n in exclude}))
    summary["weight_threshold"] = "tensors over 2048 elements"
    summary["uncompressed_bicubic_convs"] = len(exclude)
    return compressed, summary


def _program_precision(program: Any) -> dict[str, Any]:
    """fp16/fp32 op counts of a saved program, and the dtype of the attention's divisions/matmuls."""
    counts = {"fp16": 0, "fp32": 0}
    attention = {"fp16": 0, "fp32": 0}
    for op in program.operations:
        if op.type == "const" or op.type.startswith("constexpr_") or not op.outputs:
            continue
        dtype = op.outputs[0][1].mil_dtype
        if dtype in counts:
            counts[dtype] += 1
            if op.type in ("matmul", "real_div"):
                attention[dtype] += 1
    return {"fp16_ops": counts["fp16"], "fp32_ops": counts["fp32"], "attention_ops": attention}


def _describe_io(spec: InputSpec, ctx: ExportContext, image: bool) -> tuple[str, str]:
    mean = ", ".join(f"{m:g}" for m in spec.mean)
    std = ", ".join(f"{s:g}" for s in spec.std)
    if image:
        source = (f"{spec.color} image {spec.width}x{spec.height}; Core ML scales pixels by 1/255 and subtracts "
                  f"mean ({mean}), the model divides by std ({std})")
    else:
        source = (f"{spec.color} image as float32 {spec.batch}x3x{spec.height}x{spec.width} (NCHW), "
                  f"(pixel/255 - mean) / std with mean ({mean}), std ({std})")
    if ctx.task == "segmentation":
        output = (f"per-class logits ({len(ctx.classes)} classes) at 1/8 of the input size (NCHW); upsample to the "
                  "image size, then argmax; class names in metadata evit.classes")
    else:
        output = f"logits over {len(ctx.classes)} classes; softmax for probabilities; class names in metadata evit.classes"
    return source, output


# --------------------------------------------------------------------------- the target


@register("mlpackage", "coremltools", "mlprogram")
class CoreMLTarget(Target):
    name = "coreml"
    extensions = (".mlpackage",)
    precisions = ("fp32", "fp16")
    options_model = CoreMLOptions
    description = "Core ML ML program (.mlpackage) for iPhone, iPad and Mac; checked on Linux by a MIL interpreter"
    requires = INSTALL_HINT

    def available(self) -> str | None:
        return _coremltools_missing()

    def runtime_available(self, device: str = "cpu") -> str | None:
        # The MIL interpreter needs only coremltools' protobuf modules (no runtime, no torch).
        try:
            device_compute_units(device)
        except UsageError as err:
            return str(err)
        return _coremltools_missing()

    def timing_available(self, device: str = "cpu") -> str | None:
        if os.environ.get("EVIT_COREML_RUNNER") != "mil" and macos_runtime_missing() is None:
            return None
        return ("Core ML latency needs macOS with the Core ML runtime; here evit can only check the program with its "
                "MIL interpreter (numpy), whose timings say nothing about an Apple device: run `evit profile` on a "
                "Mac, or pass --device NAME with a Mac from your device inventory (see `evit devices`)")

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        options = validate_options(recipe, CoreMLOptions)
        assert isinstance(options, CoreMLOptions)
        if recipe.dynamic:
            raise UsageError("Core ML export here is static (one input size per .mlpackage); drop --dynamic and "
                             "export one artifact per resolution")
        if options.compress != "none" and options.level < COMPRESSION_MIN:
            raise UsageError(f"--compress {options.compress} needs --deployment-target iOS16 / macOS13 or newer "
                             f"(weight compression ops arrived there), not {options.deployment_target}")
        if options.image_input and recipe.batch != 1:
            raise UsageError("--image-input takes one image per prediction: use --batch 1 (or a tensor input)")

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        import torch

        from evit_deploy.convert.bicubic import bicubic_upsample_layers, replace_bicubic_upsampling
        from evit_deploy.mil import load_program, unknown_ops

        options = validate_options(recipe, CoreMLOptions)
        assert isinstance(options, CoreMLOptions)
        ct = _import_coremltools()
        notes: list[str] = []
        details: dict[str, Any] = {"deployment_target": options.deployment_target,
                                   "compute_units": options.compute_units, "frontend": "torch.export"}

        module = copy.deepcopy(model).eval()
        rewritten = bicubic_upsample_layers(module)
        if rewritten:
            replace_bicubic_upsampling(module)
            details["bicubic_rewrite"] = rewritten
            notes.append(f"{len(rewritten)} bicubic upsampling(s) rewritten as edge pad + depthwise 5x5 conv + pixel "
                         "shuffle (exact; coremltools has no bicubic resize)")
        gelus = replace_tanh_gelu(module)
        if gelus:
            notes.append(f"{gelus} tanh-GELU(s) written out as their formula (coremltools 9.0 converts tanh-GELU "
                         "from torch.export as erf-GELU)")
        if options.image_input:
            module = _normalising_wrapper(module, spec.std)
            color = ct.colorlayout.BGR if spec.color.upper() == "BGR" else ct.colorlayout.RGB
            inputs = [ct.ImageType(name="image", shape=spec.shape, scale=1 / 255.0,
                                   bias=[-m for m in spec.mean], color_layout=color)]
            details["image_input"] = {"name": "image", "color": spec.color, "scale": 1 / 255.0,
                                      "bias": [-m for m in spec.mean],
                                      "in_model": f"multiply by 1/std per channel ({list(spec.std)})"}
        else:
            inputs = [ct.TensorType(name=spec.name, shape=spec.shape, dtype=np.float32)]

        ctx.progress("torch.export")
        with torch.no_grad():
            program = torch.export.export(module, (torch.zeros(spec.shape),)).run_decompositions({})
        kept: dict[str, int] = {}
        if recipe.precision == "fp16":
            with _quiet_coremltools():
                selector, kept = _island_selector(list(options.keep_fp32))
                precision = ct.transform.FP16ComputePrecision(op_selector=selector)
        else:
            precision = ct.precision.FLOAT32
        target = getattr(ct.target, options.deployment_target)
        ctx.progress(f"coremltools convert ({recipe.precision}, {options.deployment_target})")
        with _quiet_coremltools() as chatter:
            try:
                mlmodel = ct.convert(program, convert_to="mlprogram", inputs=inputs,
                                     outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                                     minimum_deployment_target=target, compute_precision=precision,
                                     compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[options.compute_units]),
                                     skip_model_load=True)
            except (NotImplementedError, ValueError, RuntimeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                where = [line.strip() for line in chatter.getvalue().splitlines() if line.startswith("ERROR")]
                raise UsageError(f"coremltools could not convert {ctx.model_name}: {first}"
                                 + (f" ({where[-1]})" if where else "")) from None
            if options.compress != "none":
                ctx.progress(f"compressing weights ({options.compress})")
                mlmodel, details["compression"] = _compress(ct, mlmodel, options.compress, options.level)
        if recipe.precision == "fp16":
            details["fp32_islands"] = kept

        source, output = _describe_io(spec, ctx, options.image_input)
        input_name = "image" if options.image_input else spec.name
        mlmodel.short_description = (f"EfficientViT {ctx.model_name} ({ctx.task}, {spec.height}x{spec.width}, "
                                     f"{recipe.precision}) exported by evit")
        mlmodel.author = "evit-deploy (EfficientViT architecture: MIT Han Lab)"
        mlmodel.version = str(ctx.model_name)
        mlmodel.input_description[input_name] = source
        mlmodel.output_description["logits"] = output
        metadata = {
            "evit.model": ctx.model_name, "evit.task": ctx.task, "evit.precision": recipe.precision,
            "evit.input_size": f"{spec.height}x{spec.width}", "evit.input_layout": "NCHW", "evit.color": spec.color,
            "evit.mean": json.dumps(list(spec.mean)), "evit.std": json.dumps(list(spec.std)),
            "evit.image_input": json.dumps(options.image_input), "evit.classes": json.dumps(ctx.classes),
            "evit.compute_units": options.compute_units, "evit.deployment_target": options.deployment_target,
            "evit.compress": options.compress, "evit.output": output,
        }
        for key, value in metadata.items():
            mlmodel.user_defined_metadata[key] = value

        path = ctx.workdir / f"{ctx.model_name}.mlpackage"
        ctx.progress(f"saving {path.name}")
        with _quiet_coremltools():
            mlmodel.save(str(path))

        saved = load_program(path)
        details.update(specification_version=saved.specification_version, opset=saved.opset,
                       ops=saved.op_counts())
        if recipe.precision == "fp16":
            mix = _program_precision(saved)
            details["compute_precision"] = mix
            if "attention" in options.keep_fp32 and mix["attention_ops"]["fp16"]:
                raise CheckFailed(
                    f"coremltools put {mix['attention_ops']['fp16']} attention op(s) (matmul/real_div) in fp16 despite "
                    "the fp32 request; LiteMLA overflows fp16 on trained weights, so no artifact was written"
                )
            notes.append(f"fp16 with fp32 islands ({', '.join(f'{k}: {v} ops' for k, v in kept.items())}); "
                         f"{mix['fp16_ops']} fp16 / {mix['fp32_ops']} fp32 ops")
        missing = unknown_ops(saved)
        if missing:
            notes.append(f"evit's MIL interpreter lacks op(s) {sorted(missing)}: verify needs macOS for this artifact")
        torch_version = torch.__version__.split("+")[0]
        notes.append(f"coremltools {ct.__version__} has not been tested with torch {torch_version} (it warns so); "
                     "verify checks the converted program op by op")
        details["compute_units_note"] = "compute units are chosen when the app loads the model (MLModelConfiguration)"
        return ExportOutput(
            files=[path],
            converter={"coremltools": ct.__version__},
            inputs=[TensorInfo(spec.name, spec.shape, "float32", "NCHW")],
            outputs=[TensorInfo("logits", tuple(saved.output_types["logits"].shape), "float32", "NCHW")],
            notes=notes,
            details=details,
        )

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        options = CoreMLOptions.model_validate(manifest.recipe.get("options", {}))
        units = device_compute_units(device) or options.compute_units
        spec = InputSpec.from_dict(manifest.input)
        if os.environ.get("EVIT_COREML_RUNNER") != "mil" and macos_runtime_missing() is None:
            return CoreMLRunner(path, spec, compute_units=units, image_input=options.image_input)
        return MilRunner(path, spec, image_input=options.image_input)


def device_compute_units(device: str) -> str | None:
    """``--device`` for Core ML: ``cpu`` (this machine, the recipe's compute units), or compute units
    to use instead: ``cpu_and_ne``, ``cpu:cpu_and_ne`` (or, remotely, ``mac:cpu_and_ne``)."""
    key = device.strip().lower().replace("-", "_")
    key = key.removeprefix("cpu:")
    if key in ("cpu", "local", ""):
        return None
    key = _UNIT_ALIASES.get(key.replace("_", ""), key) if key not in COMPUTE_UNITS else key
    if key not in COMPUTE_UNITS:
        raise UsageError(f"unknown device {device!r} for Core ML; use cpu (the recipe's compute units) or compute "
                         f"units: {', '.join(COMPUTE_UNITS)} (e.g. --device cpu:cpu_and_ne)")
    return key


def pixels_from_normalised(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Invert the card's normalisation: NCHW normalised -> NCHW pixel values in 0..255 (float)."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x.astype(np.float32) * std + mean) * 255.0).astype(np.float32)


def camera_frame(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One normalised NCHW sample (channels in ``spec.color`` order) -> the 8-bit RGB frame an app hands
    Core ML (HxWx3). Core ML reorders an image to the model's ``color_layout`` itself, so a BGR model's
    frame is still RGB; an app's frame is 8-bit, so pixels are rounded (compare with --images)."""
    pixels = np.clip(np.rint(pixels_from_normalised(x, spec)[0]), 0, 255).astype(np.uint8)
    if spec.color.upper() == "BGR":
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def load_refusal(name: str, spec_version: int, engine_version: int | None, macos: str,
                 framework_error: Exception | None) -> str:
    """Why Core ML gave coremltools no model to run (it returns none and says nothing), in one line."""
    if engine_version is not None and spec_version > engine_version:
        needed = SPEC_MACOS.get(spec_version, f"newer than {macos}")
        return (f"{name} needs macOS {needed} or newer (Core ML specification {spec_version}, from its deployment "
                f"target); this Mac runs macOS {macos}, whose Core ML reads specification {engine_version} at most: "
                "run it on a newer Mac, check it here with evit's MIL interpreter (EVIT_COREML_RUNNER=mil), or "
                "re-export with an older --deployment-target")
    if framework_error is not None:
        return f"Core ML could not load {name}: {str(framework_error).splitlines()[0]}"
    return f"Core ML cannot load {name} here: coremltools found no Core ML framework (it runs on macOS only)"


def compute_plan_counts(model: Any, compute_units: str) -> dict[str, int]:
    """How many ML-program operations Core ML plans to run on each device (CPU, GPU, Neural Engine):
    ``MLComputePlan`` of the compiled model, preferred device per operation; operations without a
    device (constants) are counted as ``unplaced``. macOS 14.4+ with coremltools 8+."""
    ct = _import_coremltools()
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(model.get_compiled_model_path(),
                                        compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]))
    counts = {"cpu": 0, "gpu": 0, "neural_engine": 0, "unplaced": 0}
    for function in plan.model_structure.program.functions.values():
        for operation in function.block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            kind = DEVICE_KINDS.get(type(usage.preferred_compute_device).__name__) if usage else None
            counts[kind or "unplaced"] += 1
    return counts


class MilRunner(Runner):
    """The ML program evaluated by evit's numpy MIL interpreter (any OS; checks the converter only)."""

    backend = "mil-interpreter"

    def __init__(self, path: Path, spec: InputSpec, *, image_input: bool = False) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.image_input = image_input
        self.interpreter: Any = None
        self.program_input = ""

    def load(self) -> None:
        from evit_deploy.mil import Interpreter, load_program

        program = load_program(self.path)
        self.interpreter = Interpreter(program)
        if len(program.inputs) != 1:
            raise UsageError(f"{self.path.name}: expected one input, the ML program has {len(program.inputs)}")
        self.program_input, ttype = program.inputs[0]
        self.inputs = [TensorInfo(self.spec.name, tuple(ttype.shape), "float32", "NCHW")]
        self.outputs = [TensorInfo(name, tuple(program.output_types[name].shape) if name in program.output_types
                                   else (), "float32", "NCHW") for name in program.outputs]

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, np.ndarray]:
        x = super().prepare(feed, layout)[self.spec.name]
        return {self.program_input: pixels_from_normalised(x, self.spec) if self.image_input else x}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.program_input not in feed and self.spec.name in feed:  # base-prepared (e.g. sent by a remote caller)
            feed = self.prepare(feed)
        return self.interpreter.run(feed)

    def close(self) -> None:
        self.interpreter = None

    def describe(self) -> dict[str, Any]:
        program = self.interpreter.program if self.interpreter else None
        return {
            "backend": self.backend,
            "version": f"numpy {np.__version__}",
            "device": "cpu (numpy)",
            "checks": "the converter's ML program op by op, not Apple's Core ML kernels",
            "timing_meaningful": False,
            "opset": program.opset if program else None,
            "operations": len(self.interpreter.steps) if self.interpreter else None,
            "image_input": self.image_input,
        }


class CoreMLRunner(Runner):
    """``MLModel.predict`` on macOS with the chosen compute units.

    ``tolerance_profile`` tells ``verify`` which of the recipe's criteria apply: ``accelerated``
    when the GPU or Neural Engine may run the ops (they compute in fp16), None on the CPU alone.
    """

    backend = "coreml"

    def __init__(self, path: Path, spec: InputSpec, *, compute_units: str = "all", image_input: bool = False) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.compute_units = compute_units
        self.tolerance_profile = None if compute_units == "cpu_only" else "accelerated"
        self.image_input = image_input
        self.model: Any = None
        self.input_name = ""
        self._plan: dict[str, Any] | None = None

    def load(self) -> None:
        ct = _import_coremltools()
        with _quiet_coremltools():
            self.model = ct.models.MLModel(str(self.path),
                                           compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units]))
        if self.model.__proxy__ is None:  # coremltools 9.0 loads what Core ML refused without a word
            from coremltools.models import model as ct_model

            proxy = getattr(ct_model, "_MLModelProxy", None)
            engine = proxy.maximum_supported_specification_version() if proxy is not None else None
            raise RuntimeMissing(load_refusal(self.path.name, self.model.get_spec().specificationVersion, engine,
                                              platform.mac_ver()[0] or platform.system(),
                                              getattr(self.model, "_framework_error", None)))
        description = self.model.get_spec().description
        self.input_name = description.input[0].name
        self.inputs = [TensorInfo(self.spec.name, self.spec.shape, "float32", "NCHW")]
        self.outputs = [TensorInfo(o.name, tuple(o.type.multiArrayType.shape), "float32", "NCHW")
                        for o in description.output]

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, Any]:
        x = super().prepare(feed, layout)[self.spec.name]
        if not self.image_input:
            return {self.input_name: x}
        from PIL import Image

        return {self.input_name: Image.fromarray(camera_frame(x, self.spec))}

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.input_name not in feed or (self.image_input and isinstance(feed[self.input_name], np.ndarray)):
            feed = self.prepare(feed)  # base-prepared arrays (e.g. sent by a remote caller)
        try:
            predicted = self.model.predict(feed)
        except Exception as err:  # noqa: BLE001 - coremltools raises bare Exceptions: say it in one line
            raise ToolchainError(f"Core ML predict failed on {self.path.name}: {str(err).splitlines()[0]}") from None
        return {name: np.asarray(value) for name, value in predicted.items()}

    def close(self) -> None:
        self.model = None

    def compute_plan(self) -> dict[str, Any]:
        """Per-device op counts from Core ML's compute plan (once), or why they are not known."""
        if self._plan is None:
            try:
                self._plan = compute_plan_counts(self.model, self.compute_units)
            except Exception as err:  # noqa: BLE001 - informational: older macOS/coremltools have no plan
                self._plan = {"unavailable": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        return self._plan

    def describe(self) -> dict[str, Any]:
        ct = _import_coremltools()
        info = {"backend": self.backend, "version": f"coremltools {ct.__version__}",
                "device": f"macOS {platform.mac_ver()[0]} ({platform.machine()})",
                "compute_units": self.compute_units, "timing_meaningful": True, "image_input": self.image_input,
                "tolerances": self.tolerance_profile or "cpu"}
        if self.model is not None:
            info["compute_plan"] = self.compute_plan()
        return info
