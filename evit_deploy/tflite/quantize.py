"""fp16 weight casting and static int8 with float islands, through ai-edge-quantizer."""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evit_deploy.activation_ranges import clipping_pays
from evit_deploy.contracts import Images
from evit_deploy.memory import require
from evit_deploy.tflite.graph import (
    FLOAT16,
    QUANT_OPS,
    Graph,
    mark_ops,
    op_is_int8,
    weight_elements,
)
from evit_deploy.tflite.logs import native_logs_quiet
from evit_deploy.tflite.options import TfliteOptions
from evit_deploy.tflite.ranges import group_bytes, mse_ranges


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


FLOAT_MARK = "/evit_float"  # suffix of the output tensor names of ops kept float in int8
FP32_MARK = "/evit_fp32"  # suffix of the output tensor names of ops whose weights stay fp32 in fp16


def quantize_fp16(fp32: bytes, options: TfliteOptions) -> tuple[bytes, dict[str, Any]]:
    """fp16 weights with DEQUANTIZE ops (the CPU interpreter expands them at load).

    The smallest weight tensors, together up to ``options.fp16_fp32_share`` of all weights, stay
    fp32: depthwise filters, the stem and the early narrow stages, a small share of the bytes
    and the largest share of the rounding error on smooth image content.
    """
    with native_logs_quiet():
        from ai_edge_quantizer import quantizer

    graph = Graph(fp32)
    weighted = sorted((op for op in graph.ops if weight_elements(graph, op)), key=lambda o: weight_elements(graph, o))
    total = sum(weight_elements(graph, op) for op in weighted) or 1
    small: set[int] = set()
    kept = 0
    for op in weighted:  # smallest first, while they stay within the fp32 share
        if kept + weight_elements(graph, op) > options.fp16_fp32_share * total:
            break
        kept += weight_elements(graph, op)
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
        "fp16_weight_tensors": sum(1 for t in quantized.tensors if t.type == FLOAT16),
        "fp32_weight_ops": len(small),
    }


RANGES = {  # the manifest's words for each int8_ranges
    "mse": "each clipped to the least expected int8 error over the calibration images' histogram",
    "min_max": "the extremes over the calibration images",
    "moving_average": "ai-edge-quantizer's moving average of the calibration images' extremes",
}


def chosen_ranges(requested: str, task: str) -> str:
    """``auto``: MSE-clipped ranges for dense outputs (segmentation, SAM), min/max for classifiers.

    Measured with seeded weights (benchmarks/results/int8_ranges.json; tests/targets/test_tflite.py):
    on seg-B1 at 512x1024 MSE ranges keep 2.1 more points of pixel agreement on unseen photos (1.0
    on the trained instrument) and more mIoU (0.41 -> 0.48; 0.91 -> 0.95; on benchmarks/tflite.py's
    photos 1.1 points less pixel agreement but 0.34 -> 0.44 mIoU); on cls-B1 at 224, whose seeded
    top-2 logit margins are 0.005-0.2, top-1 on 20 unseen photos fell from 95% (min/max, what int8
    weights alone keep) to 90%, as percentile clipping had to 85%. A classifier's answer is one
    decision an image, not millions of pixels, and its thin margins are where a clipped range shows.
    """
    if requested != "auto":
        return requested
    return "mse" if clipping_pays(task) else "min_max"


@dataclass(frozen=True)
class Int8Plan:
    """What int8 keeps float and the ai-edge-quantizer recipe that says so, before calibration."""

    graph: Graph
    marked: bytes  # the fp32 model with the float ops' outputs renamed (FLOAT_MARK)
    recipe: list[dict[str, Any]]
    islands: list[list[int]]
    div_only: list[int]
    hardswish: list[int]
    head: list[int]
    upsampling: list[int]  # the exact bicubic rewrite's depthwise convs (Graph.upsampling_convs)

    def calibrate(self, calibration: Images, mode: str,
                  progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
        """Every tensor's range over the calibration images (of the plan's own quantised ops: ops
        kept float later by accuracy control keep their ranges, which their int8 readers need).
        Refused in one line, before anything runs, when memory cannot hold one inference."""
        from ai_edge_litert.interpreter import Interpreter

        if mode not in RANGES:  # "auto" is the export's to resolve (chosen_ranges): it knows the task
            raise ValueError(f"int8 ranges {mode!r}: one of {', '.join(RANGES)}")
        with native_logs_quiet():
            signature = Interpreter(model_content=self.marked).get_signature_list()
        (key,) = list(signature)[:1]
        (input_name,) = signature[key]["inputs"][:1]
        needed = required_bytes(self.marked) + (group_bytes(self.marked) if mode == "mse" else 0)
        histogram = "use --int8-ranges min_max (its histogram pass needs more), " if mode == "mse" else ""
        require(needed, "int8 calibration of this TFLite graph",
                f"calibrate at a lower --resolution, {histogram}or free memory")
        progress(f"calibrating int8 ranges on {len(calibration)} image(s), one at a time")
        with native_logs_quiet():
            ranges = _calibrate(self.marked, self.recipe, key, input_name, calibration,
                                "moving_average" if mode == "moving_average" else "min_max")
        return mse_ranges(self.marked, ranges, calibration, progress) if mode == "mse" else ranges

    def quantize(self, ranges: dict[str, Any], keep_float: Sequence[str] = ()) -> bytes:
        """The int8 model; ``keep_float``: output tensor names of more ops to leave float (one regex
        for all of them: ai-edge-quantizer's per-op ``no_quantize`` recipe)."""
        with native_logs_quiet():
            from ai_edge_quantizer import quantizer

        recipe = list(self.recipe)
        if keep_float:
            names = "|".join(re.escape(name) for name in sorted(set(keep_float)))
            recipe.append({"regex": f"(?:^|;)(?:{names});", "operation": "*", "algorithm_key": "no_quantize"})
        with native_logs_quiet():
            result = quantizer.Quantizer(bytearray(self.marked), recipe).quantize(
                ranges, enable_progress_bar=False, enable_progress_report=False)
        return bytes(result.quantized_model)

    def details(self, quantized: bytes, options: TfliteOptions, images: int) -> dict[str, Any]:
        """The manifest's ``details.int8``: the scheme and what stayed float."""
        graph, done = self.graph, Graph(quantized)
        still_float = [op for op in done.ops if op["type"] not in QUANT_OPS and not op_is_int8(done, op)]
        return {
            "scheme": "static int8: per-channel symmetric int8 weights, per-tensor asymmetric int8 activations "
                      f"({RANGES[options.int8_ranges]}), "
                      "float32 input and output",
            "calibration_images": images,
            "keep_float": list(options.keep_float),
            "float_ops": {
                "attention": [{"block": graph.block_name(island),
                               "ops": dict(Counter(graph.ops[i]["type"] for i in island))} for island in self.islands],
                "hardswish": len(self.hardswish),
                "head": {"block": graph.block_name(self.head),
                         "ops": dict(Counter(graph.ops[i]["type"] for i in self.head))} if self.head else None,
                "bicubic": len(self.upsampling),
                "div_only": len(self.div_only),
                "total_float_ops": len(still_float),
                "float_op_types": dict(Counter(op["type"] for op in still_float)),
            },
            "quantize_ops": sum(1 for op in done.ops if op["type"] == "QUANTIZE"),
            "dequantize_ops": sum(1 for op in done.ops if op["type"] == "DEQUANTIZE"),
        }


def int8_plan(fp32: bytes, options: TfliteOptions) -> Int8Plan:
    """The float islands of ``options.keep_float`` (DIV is always float), marked, and the recipe."""
    graph = Graph(fp32)
    islands = graph.attention_islands() if "attention" in options.keep_float else []
    float_ops: set[int] = {i for island in islands for i in island}
    div_only = [op["index"] for op in graph.ops if op["type"] == "DIV" and op["index"] not in float_ops]
    float_ops |= set(div_only)
    hardswish = [op["index"] for op in graph.ops if op["type"] == "HARD_SWISH"] if "hardswish" in options.keep_float else []
    float_ops |= set(hardswish)
    head = graph.head_ops() if "head" in options.keep_float else []
    float_ops |= set(head)
    upsampling = graph.upsampling_convs() if "bicubic" in options.keep_float else []
    float_ops |= set(upsampling)

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
    return Int8Plan(graph, marked, recipe, islands, div_only, hardswish, head, upsampling)


def quantize_int8(fp32: bytes, options: TfliteOptions, calibration: Images,
                  progress: Any) -> tuple[bytes, dict[str, Any]]:
    """Static int8 with the float islands of ``options.keep_float`` (DIV is always float)."""
    plan = int8_plan(fp32, options)
    ranges = plan.calibrate(calibration, options.int8_ranges, progress)
    progress("quantizing")
    quantized = plan.quantize(ranges)
    return quantized, plan.details(quantized, options, len(calibration))


def _calibrate(model: bytes, recipe: list[dict[str, Any]], signature: str, input_name: str,
               calibration: Images, mode: str) -> dict[str, Any]:
    """Each tensor's int8 range over the calibration images, fed one image at a time.

    ai-edge-quantizer's own calibration folds the images' ranges into a moving average
    (smoothing 0.95, seeded by the first image): with tens of images the first one keeps ~20%
    of the weight and every range sits inside what the images reach, so the rarer large
    activations clip. ``min_max`` keeps the extremes instead: cls-B1 top-1 on unseen photos
    90% -> 95% (20 photos, seeded weights).

    Memory (issue 14): the default calibrator keeps every tensor of the graph alive and copies
    each into numpy (8 GB for seg-B1 at 1024x2048), and a call with every image holds them all
    (it counts its dataset with ``len(list(...))``). The profiler-based calibrator tracks each
    tensor's min and max inside LiteRT while it runs, so memory is one inference's; it is fed
    one image per call (the state carries over). Its statistics arrive as float64 of shape (1,);
    the default calibrator's are float32 with the tensor's rank (``keepdims``), and the updates
    compute in that dtype, so each update is done in float32 and the result reshaped: the ranges,
    and the quantized model, come out identical to the one-shot default calibration
    (``tests/test_calibration_streaming.py``).
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils.qsv_utils import min_max_update, moving_average_update

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    update = min_max_update if mode == "min_max" else moving_average_update
    calib = calibrator.Calibrator(model, num_threads=max(1, os.cpu_count() or 1),
                                  mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
                                  qsv_update_func=lambda old, new: update(_float32(old), _float32(new)))
    for image in calibration:
        calib.calibrate({signature: [{input_name: image}]}, manager)
    ranks = {Graph.name_of(t): len(t.shape) for t in Graph(model).tensors}
    return {name: {key: value.reshape((1,) * ranks.get(name, 1)) for key, value in _float32(qsv).items()}
            for name, qsv in calib.get_model_qsvs().items()}


def _float32(qsv: dict[str, Any]) -> dict[str, Any]:
    return {key: np.asarray(value, dtype=np.float32) for key, value in qsv.items()}


def required_bytes(model: bytes) -> int:
    """Memory the calibrating interpreter needs: one inference's (the profiler-based calibrator keeps
    no tensor beyond its use): the largest tensors live at once, and the model twice."""
    return 4 * max(Graph(model).activation_sizes(), default=0) + 2 * len(model)
