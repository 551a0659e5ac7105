"""The TFLite export: convert, quantise, attach metadata, and prove LiteRT runs the result."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import ExportContext, ExportOutput
from evit_deploy.dependencies import package_versions
from evit_deploy.errors import CheckFailed, UsageError
from evit_deploy.spec import GraphIO, InputSpec, Precision, TensorInfo, to_layout
from evit_deploy.tflite.convert import convert_fp32
from evit_deploy.tflite.graph import Graph
from evit_deploy.tflite.metadata import add_metadata
from evit_deploy.tflite.options import TfliteOptions
from evit_deploy.tflite.quantize import quantize_fp16, quantize_int8
from evit_deploy.tflite.runner import TfliteRunner
from evit_deploy.toolchain import toolchain_error

if TYPE_CHECKING:
    import torch

def _calibration_batches(ctx: ExportContext, spec: InputSpec, layout: str) -> list[np.ndarray]:
    """The calibration images grouped into the artifact's batch size, in its layout."""
    singles = ctx.calibration_batches(spec)
    batches = []
    for start in range(0, len(singles), spec.batch):
        group = [singles[(start + b) % len(singles)] for b in range(spec.batch)]
        batch = np.concatenate(group, axis=0).astype(np.float32)
        batches.append(to_layout(batch, "NCHW", "NHWC") if layout == "nhwc" else batch)
    return batches


def export_artifact(model: torch.nn.Module, spec: InputSpec, precision: Precision, options: TfliteOptions,
                    ctx: ExportContext) -> ExportOutput:
    """``NAME.tflite`` in ``ctx.workdir``: converted, quantised as ``precision`` asks, metadata, smoke-tested."""
    calibration = _calibration_batches(ctx, spec, options.layout) if precision == Precision.INT8 else []
    ctx.progress(f"litert-torch convert ({options.layout.upper()}, bicubic {options.bicubic})")
    content, info = convert_fp32(model, ctx.graph, options)
    fp32_graph = Graph(content)
    details: dict[str, Any] = {"layout": options.layout.upper(), "fp32_ops": fp32_graph.op_counts(), **info}
    notes: list[str] = []
    if precision == Precision.FP16:
        ctx.progress("casting weights to fp16")
        content, details["fp16"] = quantize_fp16(content, options)
    elif precision == Precision.INT8:
        content, details["int8"] = quantize_int8(content, options, calibration, ctx.progress)
        fo = details["int8"]["float_ops"]
        head = f", the classifier head ({sum(fo['head']['ops'].values())} op(s))" if fo["head"] else ""
        notes.append(f"int8 with float islands: {len(fo['attention'])} LiteMLA attention core(s), "
                     f"{fo['hardswish']} HARD_SWISH op(s){head} (see details.int8.float_ops)")
    if info.get("bicubic_layers") and options.bicubic == "exact":
        notes.append(f"{info['bicubic_layers']} bicubic upsampling layer(s) exported as the exact "
                     "pad + depthwise conv + pixel shuffle rewrite (TFLite has no bicubic resize)")
    ranks = info["output_rank"] if isinstance(info["output_rank"], list) else [info["output_rank"]]
    nhwc = options.layout == "nhwc"
    inputs = [TensorInfo(i.name, (), "float32", "NHWC" if nhwc and len(i.shape) == 4 else "NCHW")
              for i in ctx.graph.inputs]
    outputs = [TensorInfo(name, (), "float32", "NHWC" if nhwc and rank == 4 else "NCHW")
               for name, rank in zip(ctx.graph.outputs, ranks)]
    content = add_metadata(content, {
        "model": ctx.model_name, "task": ctx.task, "precision": precision,
        "input_layout": inputs[0].layout, "input_size": [spec.height, spec.width], "color": spec.color,
        "mean": list(spec.mean), "std": list(spec.std), "classes": ctx.classes,
        "output": ("logits at 1/8 input resolution" if ctx.task == "segmentation" else "logits")
                  + (f" ({outputs[0].layout})" if ranks[0] == 4 else ""),
    })
    path = ctx.workdir / f"{ctx.model_name}.tflite"
    path.write_bytes(content)
    ctx.progress("loading the artifact in the LiteRT interpreter")
    inputs, outputs = _smoke_test(path, ctx.graph, inputs, outputs, calibration)
    final = Graph(content)
    details["ops"] = final.op_counts()
    details["size_bytes"] = len(content)
    return ExportOutput(files=[path], converter=package_versions("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
                        inputs=inputs, outputs=outputs, notes=notes, details=details)

def _smoke_test(path: Path, io: GraphIO, inputs: list[TensorInfo], outputs: list[TensorInfo],
                calibration: list[np.ndarray]) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Load and run once in the CPU interpreter: a model it rejects is no artifact."""
    runner = TfliteRunner(path, inputs=inputs, outputs=outputs)
    try:
        with runner:
            if calibration:  # already in the artifact's layout
                feed = {io.inputs[0].name: calibration[0]}
            else:
                feed = runner.prepare({i.name: np.zeros(i.shape, np.float32) for i in io.inputs})
            result = runner.infer(feed)
    except (RuntimeError, ValueError, UsageError) as err:  # what LiteRT refuses to load is the toolchain's fault
        raise toolchain_error("ai-edge-litert", f"to load {path.name}, just written", err) from None
    bad = [name for name, value in result.items() if not np.all(np.isfinite(value))]
    if bad:
        raise CheckFailed(f"{path.name} runs but gives non-finite values in {bad} on "
                          f"{'a calibration image' if calibration else 'a zero input'}")
    return runner.inputs, runner.outputs
