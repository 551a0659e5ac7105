"""The TFLite export: convert, quantise, attach metadata, and prove LiteRT runs the result."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import ExportContext, ExportOutput
from evit_deploy.debug.mapping_tflite import tflite_layer_map
from evit_deploy.dependencies import package_versions
from evit_deploy.errors import CheckFailed, UsageError
from evit_deploy.spec import InputSpec, TensorInfo, to_layout
from evit_deploy.tflite.convert import convert_fp32
from evit_deploy.tflite.graph import Graph
from evit_deploy.tflite.metadata import add_metadata
from evit_deploy.tflite.options import TfliteOptions
from evit_deploy.tflite.quantize import quantize_fp16, quantize_int8
from evit_deploy.tflite.runner import TfliteRunner

if TYPE_CHECKING:
    import torch

_RUN_ERRORS = (RuntimeError, ValueError, UsageError)


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


def export_artifact(model: torch.nn.Module, spec: InputSpec, precision: str, options: TfliteOptions,
                    ctx: ExportContext) -> ExportOutput:
    """``NAME.tflite`` in ``ctx.workdir``: converted, quantised as ``precision`` asks, metadata, smoke-tested."""
    calibration = _calibration_batches(ctx, spec, options.layout) if precision == "int8" else []
    ctx.progress(f"litert-torch convert ({options.layout.upper()}, bicubic {options.bicubic})")
    content, info = convert_fp32(model, spec, options)
    fp32_graph = Graph(content)
    details: dict[str, Any] = {"layout": options.layout.upper(), "fp32_ops": fp32_graph.op_counts(), **info}
    notes: list[str] = []
    if precision == "fp16":
        ctx.progress("casting weights to fp16")
        content, details["fp16"] = quantize_fp16(content, options)
    elif precision == "int8":
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
        "model": ctx.model_name, "task": ctx.task, "precision": precision,
        "input_layout": input_layout, "input_size": [spec.height, spec.width], "color": spec.color,
        "mean": list(spec.mean), "std": list(spec.std), "classes": ctx.classes,
        "output": ("logits at 1/8 input resolution" if ctx.task == "segmentation" else "logits")
                  + (f" ({output_layout})" if info["output_rank"] == 4 else ""),
    })
    path = ctx.workdir / f"{ctx.model_name}.tflite"
    path.write_bytes(content)
    ctx.progress("loading the artifact in the LiteRT interpreter")
    inputs, outputs = _smoke_test(path, spec, input_layout, output_layout, calibration)
    final = Graph(content)
    details["ops"] = final.op_counts()
    details["size_bytes"] = len(content)
    details["layer_map"] = tflite_layer_map(content, model).to_dict()
    return ExportOutput(files=[path], converter=package_versions("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
                        inputs=inputs, outputs=outputs, notes=notes, details=details)

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
