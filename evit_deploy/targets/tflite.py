"""TFLite (LiteRT): litert-torch converts, ai-edge-quantizer quantises, ai-edge-litert runs.

Export path (no TensorFlow anywhere):

1. The model is copied and its bicubic upsampling swapped for the exact conv rewrite
   (``evit_deploy.convert.bicubic``): litert-torch itself lowers ``upsample_bicubic2d`` into
   GATHER_ND/BROADCAST_TO/MUL chains, numerically exact but run outside XNNPACK and useless
   for int8. ``--bicubic converter`` keeps the converter's lowering for comparison.
2. ``--layout nhwc`` (default, what TFLite and Android's image APIs use) wraps the model so
   the input is NHWC and a 4-D output (seg logits) is NHWC; ``nchw`` keeps PyTorch's layout.
3. ``litert_torch.convert`` gives the fp32 flatbuffer.
4. fp16: ai-edge-quantizer's float casting stores conv/FC weights as fp16 with DEQUANTIZE
   ops; the CPU interpreter (XNNPACK) unpacks them at load and computes in fp32, GPU
   delegates compute in fp16. The smallest weight tensors, together 10% of the weights
   (``--fp16-fp32-share``: depthwise filters, stem, early stages), stay fp32: on seg-B1 they
   carry ~45% of the fp16 rounding error (mean |logit error| 0.0058 -> 0.0033; pixel
   agreement on 20 real photos 99.86% -> 99.93%) for 9% more bytes.
5. int8: static post-training quantisation calibrated on ``--calib`` images (per-channel
   symmetric int8 weights, per-tensor asymmetric int8 activations whose ranges are the
   extremes the calibration images reach, float I/O), with three float islands found in the
   fp32 graph:

   * ``attention``: every op between LiteMLA's qkv convolutions and its output projection
     (ReLU kernels, the two BATCH_MATMULs, the eps ADD and the DIV). LiteRT's int8 DIV kernel
     aborts when a divisor quantises to its zero point (``div.cc ... data[i] != zero_point``),
     eps (1e-15) is far below int8 resolution, the token sums span 1e3-1e4, and XNNPACK has
     no static-int8 BATCH_MATMUL (the reference kernel is ~6x slower than XNNPACK's fp32 one).
   * ``hardswish``: XNNPACK does not take int8 HARD_SWISH, and TFLite's own int8 kernel is
     the single largest cost of a naive int8 graph (~65% of its time at 512x1024). Kept
     float, DEQUANTIZE -> HARD_SWISH -> QUANTIZE is fused by XNNPACK into one int8-in,
     int8-out op.
   * ``head``: the classifier (after the global pool for classification: FCs, LayerNorm; the
     final 1x1 conv to the classes for segmentation). Negligible compute, but in int8 the
     logits themselves are quantised per tensor (a step of ~0.1 against class margins of a
     few hundredths) and the LayerNorm runs MEAN/RSQRT in int8.

   The manifest's ``details.float_ops`` lists every op that stayed float, by block.

The runner needs only ``ai-edge-litert`` and numpy (no torch): devices run it.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from evit_deploy.configs import validate_options
from evit_deploy.errors import CheckFailed, RuntimeMissing, UsageError
from evit_deploy.spec import InputSpec, TensorInfo, to_layout
from evit_deploy.targets.base import (
    ExportContext,
    ExportOutput,
    LayerTiming,
    Runner,
    Target,
    TargetOptions,
    missing_modules,
    package_versions,
    register,
)

if TYPE_CHECKING:
    import torch

    from evit_deploy.artifact import Manifest
    from evit_deploy.configs import Recipe

INSTALL_HINT = "pip install 'evit-deploy[tflite]'"
FloatIsland = Literal["attention", "hardswish", "head"]

# Ops whose weights are the model's bulk: an int8/fp16 float island never extends past them.
_COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
_QUANT_OPS = {"QUANTIZE", "DEQUANTIZE"}
_FLOAT16 = 1  # schema TensorType values
_INTEGER_TYPES = {2, 7, 9}  # INT32, INT16, INT8
_RUN_ERRORS = (RuntimeError, ValueError, UsageError)


class TfliteOptions(TargetOptions):
    layout: Literal["nhwc", "nchw"] = "nhwc"  # of the input and of 4-D outputs
    bicubic: Literal["exact", "converter"] = "exact"  # conv rewrite, or litert-torch's gather lowering
    keep_float: list[FloatIsland] = Field(default_factory=lambda: ["attention", "hardswish", "head"])  # int8 islands
    fp16_fp32_share: float = Field(0.1, ge=0.0, le=1.0)  # fp16: smallest weight tensors, up to this share, stay fp32
    int8_ranges: Literal["min_max", "moving_average"] = "min_max"  # how calibration images' ranges combine

    @field_validator("layout", "bicubic", "int8_ranges", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("keep_float", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, str):  # --keep-float attention,hardswish or a single flag value
            return [v.strip() for v in value.split(",") if v.strip()] if value.lower() != "none" else []
        return value


_DISTRIBUTIONS = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert",
                  "ai_edge_quantizer": "ai-edge-quantizer"}


def _missing(*modules: str) -> str | None:
    return missing_modules(INSTALL_HINT, *modules, names=_DISTRIBUTIONS)


@contextlib.contextmanager
def native_logs_quiet() -> Iterator[list[str]]:
    """Send the C++ runtime's stderr chatter (XNNPACK banners, absl warnings) to a buffer.

    The captured lines are handed back so an error can quote them; Python exceptions still
    carry the runtime's own message (e.g. ``div.cc ... failed to invoke``).
    """
    captured: list[str] = []
    try:
        fd = os.dup(2)
    except OSError:  # no usable stderr (some embedded hosts): nothing to redirect
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            _flush_c_stdio()
            os.dup2(fd, 2)
            os.close(fd)
            sink.seek(0)
            captured.extend(sink.read().decode(errors="replace").splitlines()[-50:])


def _flush_c_stdio() -> None:
    """Flush C stdio buffers so native log lines land in the redirected stream, not later."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        pass


# --------------------------------------------------------------------------- flatbuffer analysis


class Graph:
    """The main subgraph of a .tflite as op records: type, scope (AEQ's op id), tensors."""

    def __init__(self, content: bytes) -> None:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils

        self.model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        subgraph = self.model.subgraphs[0]
        self.tensors = subgraph.tensors
        self.outputs = [int(i) for i in subgraph.outputs]
        self.ops: list[dict[str, Any]] = []
        for index, op in enumerate(subgraph.operators):
            code = flatbuffer_utils.get_builtin_code_from_operator_code(self.model.operatorCodes[op.opcodeIndex])
            outputs = [int(i) for i in op.outputs if i >= 0]
            names = [self.tensor_name(i) for i in outputs]
            self.ops.append({
                "index": index,
                "type": codes.get(code, f"OP_{code}"),
                "inputs": [int(i) for i in op.inputs if i >= 0],
                "outputs": outputs,
                # ai-edge-quantizer's op scope: output tensor names joined by ';' plus a trailing ';'
                "scope": ";".join(n for n in names if n) + (";" if any(names) else ""),
            })
        self.producer = {t: op["index"] for op in self.ops for t in op["outputs"]}
        self.consumers: dict[int, list[int]] = {}
        for op in self.ops:
            for t in op["inputs"]:
                self.consumers.setdefault(t, []).append(op["index"])

    def tensor_name(self, index: int) -> str:
        name = self.tensors[index].name
        return name.decode() if isinstance(name, bytes) else (name or "")

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op["type"] for op in self.ops).items(), key=lambda kv: (-kv[1], kv[0])))

    def attention_islands(self) -> list[list[int]]:
        """Ops connected to each DIV through non-compute ops: LiteMLA's core, one list per block.

        Walking both ways from the normaliser's DIV and stopping at convolutions/FCs collects
        exactly what lies between the qkv projections and the output projection, whatever
        reshapes and transposes the converter put there.
        """
        def neighbours(index: int) -> list[int]:
            op = self.ops[index]
            around = [self.producer[t] for t in op["inputs"] if t in self.producer]
            around += [c for t in op["outputs"] for c in self.consumers.get(t, [])]
            return [n for n in around if self.ops[n]["type"] not in _COMPUTE_OPS]

        islands: list[list[int]] = []
        seen: set[int] = set()
        for seed in (op["index"] for op in self.ops if op["type"] == "DIV"):
            if seed not in seen:
                island = self._reach([seed], neighbours)
                seen |= island
                islands.append(sorted(island))
        return islands

    def head_ops(self) -> list[int]:
        """The ops that turn the last feature map into the outputs: the classifier.

        Walking back from the outputs: for a 2-D output (classification) everything after the
        global average pool, the pool included (FCs, the LayerNorm, activations); for a 4-D
        output (segmentation) the output's own projection, its last conv, and what follows it.
        Their compute is negligible (one vector, or a 1x1 conv to the classes at 1/8 size), but
        in int8 they quantise the logits themselves, per tensor: a step of (range / 255) against
        class margins of a few hundredths, plus an int8 LayerNorm (MEAN, SQUARED_DIFFERENCE,
        RSQRT in int8) in the classification head.
        """
        def producers(index: int) -> list[int]:
            op = self.ops[index]
            if op["type"] == "MEAN" and len(self.tensors[op["inputs"][0]].shape) == 4:
                return []  # the global pool: the feature map ends here
            if op["type"] in _COMPUTE_OPS and any(len(self.tensors[t].shape) == 4 for t in op["outputs"]):
                return []  # a segmentation head's projection to the classes
            return [self.producer[t] for t in op["inputs"] if t in self.producer]

        return sorted(self._reach([self.producer[t] for t in self.outputs if t in self.producer], producers))

    @staticmethod
    def _reach(seeds: list[int], step: Callable[[int], list[int]]) -> set[int]:
        """Every op reachable from ``seeds`` by repeatedly taking ``step`` (the seeds included)."""
        reached: set[int] = set()
        stack = list(seeds)
        while stack:
            index = stack.pop()
            if index not in reached:
                reached.add(index)
                stack.extend(n for n in step(index) if n not in reached)
        return reached

    def block_name(self, indices: list[int]) -> str:
        """A readable module path for a group of ops, from the converter's tensor names."""
        scopes = [self.ops[i]["scope"] for i in indices if self.ops[i]["scope"]]
        if not scopes:
            return f"ops {indices[0]}-{indices[-1]}"
        prefix = os.path.commonprefix([s.split(";")[0] for s in scopes])
        parts = [p for p in prefix.rstrip("/").split("/") if p]
        readable = [p.rsplit(".", 1)[-1] for p in parts]  # drop the python module prefixes
        return "/".join(readable[1:] if len(readable) > 1 else readable) or prefix


FLOAT_MARK = "/evit_float"  # suffix of the output tensor names of ops kept float in int8


def mark_ops(graph: Graph, indices: set[int], suffix: str) -> bytes:
    """The graph's flatbuffer with ``suffix`` appended to the output tensor names of ``indices``."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = graph.model
    subgraph = model.subgraphs[0]
    renamed = set()
    for index in indices:
        for tensor in subgraph.operators[index].outputs:
            if tensor >= 0 and tensor not in renamed:
                renamed.add(tensor)
                subgraph.tensors[tensor].name = graph.tensor_name(tensor) + suffix
    try:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    finally:  # leave the Graph as it was
        for tensor in renamed:
            subgraph.tensors[tensor].name = graph.tensor_name(tensor)[: -len(suffix)]


# --------------------------------------------------------------------------- conversion

_FP32_CACHE: dict[str, bytes] = {}  # conversion is the slow step (~0.5-1.5 min); reuse per process


def _model_key(model: torch.nn.Module, spec: InputSpec, options: TfliteOptions) -> str:
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    digest.update(repr(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([list(spec.shape), options.layout, options.bicubic]).encode())
    return digest.hexdigest()


def convert_fp32(model: torch.nn.Module, spec: InputSpec, options: TfliteOptions) -> tuple[bytes, dict[str, Any]]:
    """The fp32 flatbuffer of ``model`` for ``spec`` (bicubic rewritten, layout applied)."""
    import torch

    from evit_deploy.convert.bicubic import bicubic_upsample_layers, replace_bicubic_upsampling

    module = copy.deepcopy(model).eval()
    bicubic = bicubic_upsample_layers(module)
    info: dict[str, Any] = {"bicubic_layers": len(bicubic)}
    if bicubic:
        if options.bicubic == "exact":
            replace_bicubic_upsampling(module)
            info["bicubic"] = ("exact rewrite: edge pad + depthwise 5x5 conv + pixel shuffle "
                               "(evit_deploy.convert.bicubic), ~1e-7 from F.interpolate")
        else:
            info["bicubic"] = "litert-torch lowering of upsample_bicubic2d (GATHER_ND/BROADCAST_TO/MUL)"
    with native_logs_quiet():
        import litert_torch  # its import logs torchao/pytree warnings to stderr

    key = _model_key(module, spec, options)
    example = torch.zeros(spec.shape)
    with torch.no_grad():
        rank = module(example).dim()
    if options.layout == "nhwc":
        module = litert_torch.to_channel_last_io(module, args=[0], outputs=[0] if rank == 4 else [])
        example = example.permute(0, 2, 3, 1).contiguous()
    if key not in _FP32_CACHE:
        with native_logs_quiet() as logs:
            litert_torch.config.show_progress = False
            try:
                edge = litert_torch.convert(module.eval(), (example,))
                content = edge.model_content()  # serialisation happens here (and logs)
            except Exception as err:  # noqa: BLE001 - the converter raises many types; keep one line + log tail
                tail = "; ".join(logs[-3:])
                raise UsageError(f"litert-torch could not convert the model: {str(err).splitlines()[0]}"
                                 + (f" ({tail})" if tail else "")) from None
        _FP32_CACHE.clear()  # one model at a time: flatbuffers of big models are large
        _FP32_CACHE[key] = content
    info["output_rank"] = rank
    return _FP32_CACHE[key], info


def _aeq_config(activation_bits: int | None, weight_bits: int, compute: str, *, dtype: str = "INT",
                granularity: str = "CHANNELWISE") -> dict[str, Any]:
    config: dict[str, Any] = {
        "weight_tensor_config": {"num_bits": weight_bits, "symmetric": True, "granularity": granularity,
                                 "dtype": dtype},
        "compute_precision": compute,
        "explicit_dequantize": compute == "FLOAT",
        "skip_checks": False,
        "min_weight_elements": 0,
    }
    if activation_bits is not None:
        config["activation_tensor_config"] = {"num_bits": activation_bits, "symmetric": False,
                                              "granularity": "TENSORWISE", "dtype": "INT"}
    return config


FP32_MARK = "/evit_fp32"  # suffix of the output tensor names of ops whose weights stay fp32 in fp16


def _weight_elements(graph: Graph, op: dict[str, Any]) -> int:
    if op["type"] not in _COMPUTE_OPS or len(op["inputs"]) < 2:
        return 0
    return int(np.prod(graph.tensors[op["inputs"][1]].shape))


def quantize_fp16(fp32: bytes, options: TfliteOptions) -> tuple[bytes, dict[str, Any]]:
    """fp16 weights with DEQUANTIZE ops (the CPU interpreter expands them at load).

    The smallest weight tensors, together up to ``options.fp16_fp32_share`` of all weights, stay
    fp32: depthwise filters, the stem and the early narrow stages, a small share of the bytes
    and the largest share of the rounding error on smooth image content.
    """
    with native_logs_quiet():
        from ai_edge_quantizer import quantizer

    graph = Graph(fp32)
    weighted = sorted((op for op in graph.ops if _weight_elements(graph, op)), key=lambda o: _weight_elements(graph, o))
    total = sum(_weight_elements(graph, op) for op in weighted) or 1
    small: set[int] = set()
    kept = 0
    for op in weighted:  # smallest first, while they stay within the fp32 share
        if kept + _weight_elements(graph, op) > options.fp16_fp32_share * total:
            break
        kept += _weight_elements(graph, op)
        small.add(op["index"])
    marked = mark_ops(graph, small, FP32_MARK)
    config = _aeq_config(None, 16, "FLOAT", dtype="FLOAT", granularity="TENSORWISE")
    recipe = [{"regex": ".*", "operation": op, "algorithm_key": "float_casting", "op_config": config}
              for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    recipe.append({"regex": re.escape(FP32_MARK) + ";", "operation": "*", "algorithm_key": "no_quantize"})
    with native_logs_quiet():
        result = quantizer.Quantizer(bytearray(marked), recipe).quantize(enable_progress_bar=False, enable_progress_report=False)
    quantized = Graph(result.quantized_model)
    return bytes(result.quantized_model), {
        "weights": f"fp16 for the {len(weighted) - len(small)} largest of {len(weighted)} conv/FC weight tensors "
                   f"({1 - kept / total:.1%} of the weights); the {len(small)} smallest stay fp32 "
                   f"(--fp16-fp32-share {options.fp16_fp32_share:g})",
        "compute": "fp32 on the CPU interpreter (XNNPACK expands fp16 weights at load); fp16 on GPU delegates",
        "fp16_weight_tensors": sum(1 for t in quantized.tensors if t.type == _FLOAT16),
        "fp32_weight_ops": len(small),
    }


def quantize_int8(fp32: bytes, options: TfliteOptions, calibration: list[np.ndarray],
                  progress: Any) -> tuple[bytes, dict[str, Any]]:
    """Static int8 with the float islands of ``options.keep_float`` (DIV is always float)."""
    from ai_edge_litert.interpreter import Interpreter

    with native_logs_quiet():
        from ai_edge_quantizer import quantizer

    graph = Graph(fp32)
    islands = graph.attention_islands() if "attention" in options.keep_float else []
    float_ops: set[int] = {i for island in islands for i in island}
    div_only = [op["index"] for op in graph.ops if op["type"] == "DIV" and op["index"] not in float_ops]
    float_ops |= set(div_only)
    hardswish = [op["index"] for op in graph.ops if op["type"] == "HARD_SWISH"] if "hardswish" in options.keep_float else []
    float_ops |= set(hardswish)
    head = graph.head_ops() if "head" in options.keep_float else []
    float_ops |= set(head)

    # Float ops are marked by a suffix on their output tensors' names (it also tells anyone
    # inspecting the model which ops are float on purpose); one short regex then selects them.
    # (One escaped regex per op scope made ai-edge-quantizer recompile ~600 regexes per op.)
    marked = mark_ops(graph, float_ops, FLOAT_MARK)
    recipe: list[dict[str, Any]] = [
        {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
         "op_config": _aeq_config(8, 8, "INTEGER")},
        {"regex": ".*", "operation": "INPUT", "algorithm_key": "no_quantize"},  # float I/O
        {"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"},
        {"regex": re.escape(FLOAT_MARK) + ";", "operation": "*", "algorithm_key": "no_quantize"},
    ]

    with native_logs_quiet():
        qt = quantizer.Quantizer(bytearray(marked), recipe)
        signature = Interpreter(model_content=marked).get_signature_list()
    (key,) = list(signature)[:1]
    (input_name,) = signature[key]["inputs"][:1]
    progress(f"calibrating int8 ranges on {len(calibration)} image(s)")
    with native_logs_quiet():
        ranges = _calibrate(marked, recipe, {key: [{input_name: x} for x in calibration]}, options.int8_ranges)
        progress("quantizing")
        result = qt.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
    quantized = Graph(result.quantized_model)
    still_float = [op for op in quantized.ops if op["type"] not in _QUANT_OPS and not _op_is_int8(quantized, op)]
    details: dict[str, Any] = {
        "scheme": "static int8: per-channel symmetric int8 weights, per-tensor asymmetric int8 activations "
                  f"({options.int8_ranges.replace('_', ' ')} ranges over the calibration images), "
                  "float32 input and output",
        "calibration_images": len(calibration),
        "keep_float": list(options.keep_float),
        "float_ops": {
            "attention": [{"block": graph.block_name(island),
                           "ops": dict(Counter(graph.ops[i]["type"] for i in island))} for island in islands],
            "hardswish": len(hardswish),
            "head": {"block": graph.block_name(head), "ops": dict(Counter(graph.ops[i]["type"] for i in head))}
            if head else None,
            "div_only": len(div_only),
            "total_float_ops": len(still_float),
            "float_op_types": dict(Counter(op["type"] for op in still_float)),
        },
        "quantize_ops": sum(1 for op in quantized.ops if op["type"] == "QUANTIZE"),
        "dequantize_ops": sum(1 for op in quantized.ops if op["type"] == "DEQUANTIZE"),
    }
    return bytes(result.quantized_model), details


def _calibrate(model: bytes, recipe: list[dict[str, Any]], data: dict[str, list[dict[str, np.ndarray]]],
               mode: str) -> dict[str, Any]:
    """Each tensor's int8 range over the calibration images.

    ai-edge-quantizer's own calibration folds the images' ranges into a moving average
    (smoothing 0.95, seeded by the first image): with tens of images the first one keeps ~20%
    of the weight and every range sits inside what the images reach, so the rarer large
    activations clip. ``min_max`` keeps the extremes instead: cls-B1 top-1 on unseen photos
    90% -> 95% (20 photos, seeded weights).
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils.qsv_utils import min_max_update

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    update = {"qsv_update_func": min_max_update} if mode == "min_max" else {}
    calib = calibrator.Calibrator(model, num_threads=max(1, os.cpu_count() or 1), **update)
    calib.calibrate(data, manager)
    return calib.get_model_qsvs()


def _op_is_int8(graph: Graph, op: dict[str, Any]) -> bool:
    """An op computes in integers when its first output tensor is int8/int16/int32."""
    if not op["outputs"]:
        return False
    return graph.tensors[op["outputs"][0]].type in _INTEGER_TYPES


def add_metadata(content: bytes, entries: dict[str, Any]) -> bytes:
    """Attach ``entries`` as JSON under the flatbuffer metadata name ``evit`` (apps read it)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(entries, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name = "evit"
    metadata.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != "evit"]
    model.metadata.append(metadata)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``evit`` metadata of a .tflite written by this target ({} when absent)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == "evit":
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return {}


def _calibration_batches(ctx: ExportContext, spec: InputSpec, layout: str) -> list[np.ndarray]:
    if ctx.calibration is None:
        raise UsageError("int8 needs calibration images: pass --calib DIR (a folder of representative images)")
    singles = ctx.calibration(spec)
    if not singles:
        raise UsageError("the calibration source gave no images; pass --calib DIR with representative images")
    batches = []
    for start in range(0, len(singles), spec.batch):
        group = [singles[(start + b) % len(singles)] for b in range(spec.batch)]
        batch = np.concatenate(group, axis=0).astype(np.float32)
        batches.append(to_layout(batch, "NCHW", "NHWC") if layout == "nhwc" else batch)
    return batches


@register("litert", "tfl")
class TfliteTarget(Target):
    name = "tflite"
    extensions = (".tflite",)
    precisions = ("fp32", "fp16", "int8")
    options_model = TfliteOptions
    description = "TFLite flatbuffer, run with LiteRT (XNNPACK) on Android/ARM/x86 CPUs"
    requires = INSTALL_HINT

    def available(self) -> str | None:
        return _missing("litert_torch", "ai_edge_litert", "ai_edge_quantizer")

    def runtime_available(self, device: str = "cpu") -> str | None:
        return _missing("ai_edge_litert")

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        options = validate_options(recipe, TfliteOptions)
        assert isinstance(options, TfliteOptions)
        if recipe.dynamic:
            raise UsageError("TFLite artifacts here are static: drop --dynamic and export one artifact per "
                             "input size (--resolution HxW, --batch N)")

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        options = validate_options(recipe, TfliteOptions)
        assert isinstance(options, TfliteOptions)
        calibration = _calibration_batches(ctx, spec, options.layout) if recipe.precision == "int8" else []
        ctx.progress(f"litert-torch convert ({options.layout.upper()}, bicubic {options.bicubic})")
        content, info = convert_fp32(model, spec, options)
        fp32_graph = Graph(content)
        details: dict[str, Any] = {"layout": options.layout.upper(), "fp32_ops": fp32_graph.op_counts(), **info}
        notes: list[str] = []
        if recipe.precision == "fp16":
            ctx.progress("casting weights to fp16")
            content, details["fp16"] = quantize_fp16(content, options)
        elif recipe.precision == "int8":
            content, details["int8"] = quantize_int8(content, options, calibration, ctx.progress)
            fo = details["int8"]["float_ops"]
            head = f", the classifier head ({sum(fo['head']['ops'].values())} op(s))" if fo["head"] else ""
            notes.append(f"int8 with float islands: {len(fo['attention'])} LiteMLA attention core(s), "
                         f"{fo['hardswish']} HARD_SWISH op(s){head} (see details.int8.float_ops)")
        if info.get("bicubic_layers") and options.bicubic == "exact":
            notes.append(f"{info['bicubic_layers']} bicubic upsampling layer(s) exported as the exact "
                         "pad + depthwise conv + pixel shuffle rewrite (TFLite has no bicubic resize)")
        output_layout = "NHWC" if options.layout == "nhwc" and info["output_rank"] == 4 else "NCHW"
        input_layout = "NHWC" if options.layout == "nhwc" else "NCHW"
        content = add_metadata(content, {
            "model": ctx.model_name, "task": ctx.task, "precision": recipe.precision,
            "input_layout": input_layout, "input_size": [spec.height, spec.width], "color": spec.color,
            "mean": list(spec.mean), "std": list(spec.std), "classes": ctx.classes,
            "output": ("logits at 1/8 input resolution" if ctx.task == "segmentation" else "logits")
                      + (f" ({output_layout})" if info["output_rank"] == 4 else ""),
        })
        path = ctx.workdir / f"{ctx.model_name}.tflite"
        path.write_bytes(content)
        ctx.progress("loading the artifact in the LiteRT interpreter")
        inputs, outputs = self._smoke_test(path, spec, input_layout, output_layout, calibration)
        final = Graph(content)
        details["ops"] = final.op_counts()
        details["size_bytes"] = len(content)
        return ExportOutput(files=[path], converter=package_versions("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
                            inputs=inputs, outputs=outputs, notes=notes, details=details)

    @staticmethod
    def _smoke_test(path: Path, spec: InputSpec, input_layout: str, output_layout: str,
                    calibration: list[np.ndarray]) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """Load and run once in the CPU interpreter: a model it rejects is no artifact."""
        runner = TfliteRunner(path, inputs=[TensorInfo(spec.name, (), "float32", input_layout)],  # type: ignore[arg-type]
                              outputs=[TensorInfo("logits", (), "float32", output_layout)])  # type: ignore[arg-type]
        try:
            with runner:
                sample = calibration[0] if calibration else None
                feed = runner.prepare({spec.name: np.zeros(spec.shape, np.float32)}) if sample is None \
                    else {spec.name: sample}
                result = runner.infer(feed)
        except _RUN_ERRORS as err:
            raise CheckFailed(f"{path.name} was written but LiteRT cannot run it: {err}") from None
        bad = [name for name, value in result.items() if not np.all(np.isfinite(value))]
        if bad:
            raise CheckFailed(f"{path.name} runs but gives non-finite values in {bad} on "
                              f"{'a calibration image' if calibration else 'a zero input'}")
        return runner.inputs, runner.outputs

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        if device != "cpu":
            raise UsageError(f"the LiteRT runner here runs on the CPU (XNNPACK); got --device {device!r}")
        inputs = [_info(i) for i in manifest.inputs] or None
        outputs = [_info(o) for o in manifest.outputs] or None
        return TfliteRunner(path, threads=threads, inputs=inputs, outputs=outputs)


def _info(data: dict[str, Any]) -> TensorInfo:
    return TensorInfo(data["name"], tuple(data.get("shape", ())), data.get("dtype", "float32"), data.get("layout", "NCHW"))



# --------------------------------------------------------------------------- runner


class TfliteRunner(Runner):
    """ai-edge-litert's interpreter with the XNNPACK CPU delegate (``xnnpack=False``: reference kernels).

    ``inputs``/``outputs`` give the names and layouts evit uses (the manifest's); the
    interpreter's own tensors are matched to them by position.
    """

    backend = "litert"

    def __init__(self, path: Path, *, threads: int | None = None, inputs: list[TensorInfo] | None = None,
                 outputs: list[TensorInfo] | None = None, xnnpack: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.xnnpack = xnnpack
        self._declared_inputs = inputs or []
        self._declared_outputs = outputs or []
        self.interpreter: Any = None
        self._in_index: list[int] = []
        self._out_index: list[int] = []

    def load(self) -> None:
        reason = _missing("ai_edge_litert")
        if reason:
            raise RuntimeMissing(reason)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if self.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with native_logs_quiet() as logs:
            try:
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads,
                                               experimental_op_resolver_type=resolver)
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as err:
                tail = "; ".join(line for line in logs[-3:] if line.strip())
                raise UsageError(f"{self.path.name}: LiteRT cannot load it: {str(err).splitlines()[0]}"
                                 + (f" ({tail})" if tail else "")) from None
        details_in = self.interpreter.get_input_details()
        details_out = self.interpreter.get_output_details()
        self._in_index = [d["index"] for d in details_in]
        self._out_index = [d["index"] for d in details_out]
        self.inputs = [self._merge(d, self._declared_inputs, i, "input") for i, d in enumerate(details_in)]
        self.outputs = [self._merge(d, self._declared_outputs, i, "logits") for i, d in enumerate(details_out)]

    @staticmethod
    def _merge(detail: dict[str, Any], declared: list[TensorInfo], index: int, default: str) -> TensorInfo:
        shape = tuple(int(d) for d in detail["shape"])
        dtype = np.dtype(detail["dtype"]).name
        if index < len(declared):
            return TensorInfo(declared[index].name, shape, dtype, declared[index].layout)
        return TensorInfo(default if index == 0 else f"{default}_{index}", shape, dtype, "NCHW")

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for info, index in zip(self.inputs, self._in_index):
            self.interpreter.set_tensor(index, np.ascontiguousarray(feed[info.name]))
        try:
            self.interpreter.invoke()
        except RuntimeError as err:
            raise UsageError(f"{self.path.name}: LiteRT failed to run it: {str(err).splitlines()[0]}") from None
        return {info.name: self.interpreter.get_tensor(index) for info, index in zip(self.outputs, self._out_index)}

    def close(self) -> None:
        self.interpreter = None

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        try:
            version = metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:  # pragma: no cover
            version = "unknown"
        return {"backend": self.backend, "version": version, "device": "cpu",
                "delegate": "xnnpack" if self.xnnpack else "none (reference kernels)", "threads": self.threads,
                "layouts": {i.name: i.layout for i in self.inputs + self.outputs}}

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        """Op times from LiteRT's own profiler (CompiledModel API, XNNPACK), per run."""
        from evit_deploy.targets._litert_profiler import ProfilerUnavailable, profile_ops

        feeds = [np.ascontiguousarray(feed[i.name]) for i in self.inputs]
        try:
            with native_logs_quiet():
                rows, _ = profile_ops(self.path, feeds, threads=self.threads, iters=iters)
        except (ProfilerUnavailable, OSError) as err:
            raise UsageError(f"--per-layer needs LiteRT's op profiler, unavailable here: {err}") from None
        totals = [(row, row.avg_ms * row.calls / iters) for row in rows]
        whole = sum(t for _, t in totals) or 1.0
        layers = [LayerTiming(name=row.name, op_type=row.node_type.removeprefix("Delegate/"), total_ms=total,
                              calls=max(1, row.calls // iters), share=total / whole) for row, total in totals]
        return sorted(layers, key=lambda r: r.total_ms, reverse=True)
