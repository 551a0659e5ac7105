"""The TFLite export: convert, quantise, attach metadata, and prove LiteRT runs the result."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.accuracy_control import (
    Outcome,
    control_details,
    control_goal,
    control_images,
    control_split,
    outcome,
    spread,
)
from evit_deploy.contracts import ExportContext, ExportOutput, Images
from evit_deploy.dependencies import package_versions
from evit_deploy.errors import CheckFailed, UsageError
from evit_deploy.profiling import peak_rss_mb
from evit_deploy.spec import GraphIO, InputSpec, Precision, TensorInfo, to_layout
from evit_deploy.tflite.convert import convert_fp32
from evit_deploy.tflite.graph import Graph
from evit_deploy.tflite.layer_map import tflite_layer_map
from evit_deploy.tflite.metadata import add_metadata
from evit_deploy.tflite.options import TfliteOptions
from evit_deploy.tflite.quantize import chosen_ranges, int8_plan, quantize_fp16, quantize_int8
from evit_deploy.tflite.runner import TfliteRunner
from evit_deploy.toolchain import toolchain_error

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class _Batches:
    """Calibration images grouped into the model's batch (the last group wraps around to the first
    images) in its layout, read one image at a time whenever iterated."""

    singles: Images
    batch: int
    nhwc: bool

    def __iter__(self) -> Iterator[np.ndarray]:
        head: list[np.ndarray] = []  # the first images, to complete a last partial group
        group: list[np.ndarray] = []
        for image in self.singles:
            if len(head) < self.batch:
                head.append(image)
            group.append(image)
            if len(group) == self.batch:
                yield self._joined(group)
                group = []
        if group:
            yield self._joined(group + (head * self.batch)[: self.batch - len(group)])

    def __len__(self) -> int:
        return (len(self.singles) + self.batch - 1) // self.batch

    def _joined(self, group: list[np.ndarray]) -> np.ndarray:
        batch = np.concatenate(group, axis=0).astype(np.float32)
        return to_layout(batch, "NCHW", "NHWC") if self.nhwc else batch


def _calibration_batches(ctx: ExportContext, spec: InputSpec, layout: str) -> _Batches:
    return _Batches(ctx.calibration_batches(spec), spec.batch, layout == "nhwc")


def export_artifact(model: torch.nn.Module, spec: InputSpec, precision: Precision, options: TfliteOptions,
                    ctx: ExportContext) -> ExportOutput:
    """``NAME.tflite`` in ``ctx.workdir``: converted, quantised as ``precision`` asks, metadata, smoke-tested."""
    calibration = _calibration_batches(ctx, spec, options.layout) if precision == Precision.INT8 else None
    ctx.progress(f"litert-torch convert ({options.layout.upper()}, bicubic {options.bicubic})")
    content, info = convert_fp32(model, ctx.graph, options)
    fp32_graph = Graph(content)
    details: dict[str, Any] = {"layout": options.layout.upper(), "fp32_ops": fp32_graph.op_counts(), **info}
    notes: list[str] = []
    failure, stem = None, ctx.model_name
    if precision == Precision.FP16:
        ctx.progress("casting weights to fp16")
        content, details["fp16"] = quantize_fp16(content, options)
    elif precision == Precision.INT8 and calibration is not None:
        options = options.model_copy(update={"int8_ranges": chosen_ranges(options.int8_ranges, ctx.task)})
        if not options.controlled:
            content, details["int8"] = quantize_int8(content, options, calibration, ctx.progress)
        else:
            content, details["int8"], control = _controlled_int8(model, content, spec, options, ctx)
            notes.append(control.note)
            failure, stem = control.failure, control.stem
        fo = details["int8"]["float_ops"]
        head = f", the classifier head ({sum(fo['head']['ops'].values())} op(s))" if fo["head"] else ""
        bicubic = f", {fo['bicubic']} bicubic upsampling conv(s)" if fo["bicubic"] else ""
        notes.append(f"int8 with float islands: {len(fo['attention'])} LiteMLA attention core(s), "
                     f"{fo['hardswish']} HARD_SWISH op(s){bicubic}{head} (see details.int8.float_ops)")
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
    path = ctx.workdir / f"{stem}.tflite"
    path.write_bytes(content)
    ctx.progress("loading the artifact in the LiteRT interpreter")
    inputs, outputs = _smoke_test(path, ctx.graph, inputs, outputs, calibration)
    final = Graph(content)
    details["ops"] = final.op_counts()
    details["size_bytes"] = len(content)
    details["layer_map"] = tflite_layer_map(content, model).to_dict()
    if precision == "int8":
        details["peak_rss_mb"] = round(peak_rss_mb(), 1)  # the process's high-water mark, calibration included
    return ExportOutput(files=[path], converter=package_versions("litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
                        inputs=inputs, outputs=outputs, notes=notes, details=details, failure=failure)


def _controlled_int8(model: torch.nn.Module, fp32: bytes, spec: InputSpec, options: TfliteOptions,
                     ctx: ExportContext) -> tuple[bytes, dict[str, Any], Outcome]:
    """int8 with the fewest worst layers float that meets ``options``' goal (``--min-agreement`` on the
    held-out calibration images, or ``--max-drop`` on ``--data``; ``tflite.accuracy``); short of it,
    the best candidate under a name that says so."""
    from evit_deploy.tflite.accuracy import RANKED_BY, RANKING_IMAGES, control_int8

    nhwc = options.layout == "nhwc"
    singles = [x.astype(np.float32) for x in control_images(ctx, spec, options)]
    ranged_nchw, held = control_split(singles, options)
    ranged = [to_layout(x, "NCHW", "NHWC") for x in ranged_nchw] if nhwc else ranged_nchw
    plan = int8_plan(fp32, options)
    if held:
        ctx.progress(f"accuracy control: {len(held)} calibration image(s) held out for agreement")
    ranges = plan.calibrate(ranged, options.int8_ranges, ctx.progress)
    goal = control_goal(model, ctx, spec, options, held)
    class_axis = -1 if nhwc else 1  # the classes: last in NHWC logits (and in 2-D ones), second in NCHW
    result, plain = control_int8(plan, ranges, model, goal, ranking_images=spread(ranged, RANKING_IMAGES),
                                 nhwc=nhwc, class_axis=class_axis, max_float_share=options.max_float_share,
                                 threads=None, progress=ctx.progress)
    details = plan.details(result.candidate, options, len(ranged))
    details["accuracy_control"] = control_details(result, plain, goal, RANKED_BY)
    return result.candidate, details, outcome(result, plain, goal, ctx.model_name)


def _smoke_test(path: Path, io: GraphIO, inputs: list[TensorInfo], outputs: list[TensorInfo],
                calibration: _Batches | None) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Load and run once in the CPU interpreter: a model it rejects is no artifact."""
    runner = TfliteRunner(path, inputs=inputs, outputs=outputs)
    try:
        with runner:
            sample = next(iter(calibration), None) if calibration is not None else None
            if sample is not None:  # already in the artifact's layout
                feed = {io.inputs[0].name: sample}
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
