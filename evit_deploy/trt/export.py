"""The TensorRT export: the typed ONNX TensorRT builds, its build plan and trtexec script, the engine.

The ONNX comes from the ONNX backend's exporter; here it is typed (fp16 behind Casts around the
fp32 islands, or Q/DQ for int8), checked for fp16 overflow on ONNX Runtime, planned for the
chosen TensorRT major, and (unless ``--plan-only``) built with ``evit_deploy.trt.build``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import ExportContext, ExportOutput
from evit_deploy.dependencies import package_versions
from evit_deploy.errors import ToolchainError
from evit_deploy.onnx.export import (
    add_metadata,
    check_and_save,
    export_onnx_graph,
    simplify,
    tensor_infos,
)
from evit_deploy.onnx.opset import opset_of, to_opset_17
from evit_deploy.onnx.options import OnnxOptions
from evit_deploy.profiling import peak_rss_mb
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.trt.options import EXPORTER_OPSET, PARSER_OPSET, Profile, TrtOptions, resolve_profiles

if TYPE_CHECKING:
    import onnx
    import torch

    from evit_deploy.accuracy_control import Outcome
    from evit_deploy.configs import Recipe


def export_artifact(model: torch.nn.Module, spec: InputSpec, recipe: Recipe, options: TrtOptions,
                    ctx: ExportContext) -> ExportOutput:
    """Typed ONNX + plan + trtexec script (+ engine and its layer information unless plan-only) in ``ctx.workdir``."""
    import onnx

    from evit_deploy.graph import select_islands
    from evit_deploy.trt import typed

    profiles = resolve_profiles(options, spec, ctx.graph, ctx.image_graph)
    precision = recipe.precision
    opset = options.onnx_opset
    ctx.progress(f"torch.onnx.export (dynamo, opset {opset})")
    # TensorRT builds its own cubic resize; the exact conv form is an ORT CPU speed-up, unmeasured on GPUs.
    graph = export_onnx_graph(model, ctx.graph, OnnxOptions(opset=max(opset, EXPORTER_OPSET),
                                                            simplify=options.simplify, bicubic="resize"),
                              ctx.workdir)
    if options.simplify != "none":
        graph = simplify(graph, options.simplify)
    if opset_of(graph) > opset:  # TensorRT 8.x: the exporter's 18 written down to the parser's 17
        ctx.progress(f"writing the graph for opset {opset}")
        graph = to_opset_17(graph)
    typed.name_all_nodes(graph)  # the names the plan, trtexec and TensorRT's layers share
    islands = select_islands(graph, options.keep_fp32) if precision != Precision.FP32 else []
    notes: list[str] = []
    details: dict[str, Any] = {}

    # the graph TensorRT builds
    int8_info, control = None, None
    if precision == Precision.INT8:
        build, int8_info, control = _int8(graph, model, spec, recipe, options, islands, ctx)
        if control is not None:
            notes.append(control.note)
    elif precision == Precision.FP16 and options.typing_mode == "strong":
        ctx.progress("fp16 with fp32 islands behind Casts")
        build = typed.to_fp16(graph, islands)
    else:
        build = graph  # fp32, or fp16 by weak typing (trtexec --fp16 + per-layer fp32)

    # what fp16 will compute, checked for overflow at the export shape and --max-shape
    overflow = None
    if precision == Precision.FP16 and options.overflow_check:
        simulated = build if options.typing_mode == "strong" else typed.to_fp16(graph, islands)
        overflow = _overflow(simulated, spec, profiles, options, ctx)
    elif precision == Precision.FP16:
        notes.append("fp16 overflow check skipped (overflow_check: false)")

    add_metadata(build, spec, ctx, precision)
    if opset_of(build) != opset:
        raise ToolchainError(f"the typed ONNX came out at opset {opset_of(build)}, not the {opset} its TensorRT "
                             f"{options.trt_version} parser was planned for")
    stem = control.stem if control else ctx.model_name  # a failed accuracy control: a name that says so
    onnx_path = ctx.workdir / f"{stem}.onnx"
    final = check_and_save(build, onnx_path)  # onnx.checker at the graph's own opset: every op must exist there
    plan = _plan(final, onnx_path, islands, profiles, recipe, options, ctx, int8_info, overflow, stem)
    plan_path = ctx.workdir / f"{stem}.trt-plan.json"
    plan.save(plan_path)
    from evit_deploy.trt.plan import script

    script_path = ctx.workdir / f"{stem}.trtexec.sh"
    script_path.write_text(script(plan, plan_path.name))
    script_path.chmod(0o755)
    files = [onnx_path, plan_path, script_path]
    details["plan"] = plan.summary()
    details["opset"] = opset
    details["fp32_islands"] = [i.model_dump() for i in plan.islands]
    if overflow is not None:
        details["overflow"] = overflow
    if int8_info is not None:
        details["int8"] = int8_info
    notes.append(f"TensorRT {plan.trt_version}, {plan.typing} typing: {len(plan.islands)} fp32 island(s), "
                 f"{len(plan.expected_layers)} layer(s) the engine must run in fp32")

    if options.plan_only:
        notes.append(f"plan only: build on the device with ./{script_path.name} "
                     f"or python -m evit_deploy.trt.build {plan_path.name}")
    else:
        from evit_deploy.trt.build import build_engine

        ctx.progress(f"building the TensorRT engine ({plan.typing} typing)")
        engine_path = ctx.workdir / plan.engine
        report = build_engine(plan, onnx_path, engine_path, layer_info_path=ctx.workdir / plan.layer_info,
                              timing_cache=options.timing_cache, progress=ctx.progress)
        files += [engine_path, ctx.workdir / plan.layer_info]
        details["engine"] = report
        notes += report["notes"]
    if precision == "int8":
        details["peak_rss_mb"] = round(peak_rss_mb(), 1)  # the process's high-water mark, calibration included
    converter = {"onnx": onnx.__version__, **package_versions("onnxscript", "onnxruntime", "tensorrt")}
    return ExportOutput(files=files, converter=converter, inputs=tensor_infos(final, "input"),
                        outputs=tensor_infos(final, "output"), notes=notes, details=details,
                        failure=control.failure if control else None)

def _int8(graph: onnx.ModelProto, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, options: TrtOptions,
          islands: list[Any], ctx: ExportContext) -> tuple[onnx.ModelProto, dict[str, Any], Outcome | None]:
    from evit_deploy.onnx.qdq import TENSORRT, key_material
    from evit_deploy.trt import int8

    exclude = [n for island in islands for n in island.nodes]
    ctx.progress(f"int8: Q/DQ on {', '.join(options.quantize_ops)}; {len(exclude)} island node(s) stay fp32")

    def quantise(float_nodes: list[str], images: Iterable[np.ndarray],
                 material: dict[str, Any]) -> tuple[onnx.ModelProto, dict[str, Any]]:
        return int8.quantize_qdq(graph, images, input_name=ctx.graph.inputs[0].name, exclude=exclude + float_nodes,
                                 op_types=options.quantize_ops, method=options.calib_method,
                                 key_material=material, progress=ctx.progress)

    if not options.controlled:
        return (*quantise([], ctx.calibration_batches(spec), key_material(graph, spec, recipe)), None)
    from evit_deploy.onnx.accuracy import controlled_int8

    # the agreement is measured on ONNX Runtime, which computes the Q/DQ as TensorRT defines it
    return controlled_int8(graph, model, spec, ctx, options, None, TENSORRT, options.quantize_ops, quantise,
                           key_material(graph, spec, recipe))


def _overflow(simulated: onnx.ModelProto, spec: InputSpec, profiles: dict[str, Profile], options: TrtOptions,
              ctx: ExportContext) -> dict[str, Any]:
    """Scan the fp16 graph at the export shape and, with a profile, at its max shapes."""
    from evit_deploy.trt.typed import raise_on_overflow, scan_fp16

    results = {}
    for where, feeds, source in _overflow_feeds(spec, profiles, options, ctx):
        ctx.progress(f"fp16 overflow check ({where}) on ONNX Runtime")
        scan = scan_fp16(simulated, feeds)
        results[where] = {**scan.to_dict(), "inputs": source}
        raise_on_overflow(scan, where)
    return results


def _overflow_feeds(spec: InputSpec, profiles: dict[str, Profile], options: TrtOptions,
                    ctx: ExportContext) -> Iterator[tuple[str, list[dict[str, np.ndarray]], str]]:
    """(where, feeds, what they are) at the export shape and at the profile's max shapes (batch 1: the
    sums that overflow grow with tokens and points, not with independent rows, and a SAM decoder at 64
    prompts needs ~10 GB to scan): calibration images or seeded random pixels for an image graph;
    seeded standard normal values for a graph fed by another graph or by prompts (the scan needs
    magnitudes, not meaning)."""
    from evit_deploy.data import random_batch

    if not ctx.image_graph:  # batch (axis 0) at its least, as for images: rows are computed independently
        at_max = {i.name: (profiles[i.name].min[0], *profiles[i.name].max[1:]) if i.name in profiles else i.shape
                  for i in ctx.graph.inputs}
        shapes = [("export shape", {i.name: i.shape for i in ctx.graph.inputs})]
        if any(at_max[i.name] != i.shape for i in ctx.graph.inputs):
            shapes.append(("profile max", at_max))
        for where, sizes in shapes:
            rng = np.random.default_rng(0)
            yield where, [{name: rng.standard_normal(size).astype(np.float32) for name, size in sizes.items()}
                          for _ in range(options.overflow_samples)], "standard normal values (seed 0)"
        return
    image = ctx.graph.inputs[0].name
    profile = profiles.get(image)
    sizes = [("export shape", spec.height, spec.width)]
    if profile is not None and (profile.max[2], profile.max[3]) != (spec.height, spec.width):
        sizes.append(("--max-shape", profile.max[2], profile.max[3]))
    for where, h, w in sizes:
        at = spec.with_resolution(h, w, batch=1)
        if ctx.calibration is not None:
            yield where, [{image: x} for x in islice(ctx.calibration_batches(at), options.overflow_samples)], \
                "calibration images"
        else:
            yield where, [{image: random_batch(at, 0, i)} for i in range(options.overflow_samples)], \
                "random pixels (seed 0)"


def _plan(final: onnx.ModelProto, onnx_path: Path, islands: list[Any], profiles: dict[str, Profile],
          recipe: Recipe, options: TrtOptions, ctx: ExportContext,
          int8_info: dict[str, Any] | None, overflow: dict[str, Any] | None, name: str) -> Any:
    from evit_deploy.graph import islands_summary
    from evit_deploy.manifest import sha256_path
    from evit_deploy.trt import plan as p
    from evit_deploy.trt import typed

    summary = [p.Island(**i) for i in islands_summary(islands)]
    outputs = typed.float_outputs(final, {n for island in summary for n in island.nodes})
    expected = p.expectations(summary, typed.node_ops(final), outputs)
    outside = typed.fp32_outside_islands(final, islands) if recipe.precision == Precision.FP16 and \
        options.typing_mode == "strong" else []
    precisions, output_types = ({}, {})
    if options.typing_mode == "weak" and recipe.precision != Precision.FP32:
        precisions, output_types = p.weak_typing_constraints(expected, typed.output_counts(final))
    plan = p.BuildPlan(
        model=ctx.model_name, task=ctx.task, precision=recipe.precision, trt_version=options.trt_version,
        trt_major=options.major, typing=options.typing_mode, platform=options.platform,
        onnx=onnx_path.name, onnx_sha256=sha256_path(onnx_path), opset=opset_of(final),
        parser_opset=PARSER_OPSET[options.trt_version], engine=f"{name}.engine",
        layer_info=f"{name}.layers.json", input_name=ctx.graph.inputs[0].name,
        output_names=[o.name for o in final.graph.output],
        static_shape=None if profiles else list(ctx.graph.inputs[0].shape),
        profiles={name: profile.to_dict() for name, profile in profiles.items()},
        workspace_gib=options.workspace, dla_core=options.dla_core,
        builder_optimization_level=options.builder_opt_level,
        timing_cache=options.timing_cache.name if options.timing_cache else None,
        tf32=recipe.precision != Precision.FP32,
        islands=summary, fp32_outside_islands=[p.Fp32Outside(**o) for o in outside], expected_layers=expected,
        island_tensors=[t for e in expected for t in e.outputs],
        layer_precisions=precisions, layer_output_types=output_types, int8=int8_info, overflow=overflow,
    )
    if recipe.precision == Precision.FP32:
        plan.notes.append("fp32: no islands; TF32 is off so fp32 means fp32 (--noTF32)")
    if options.typing_mode == "weak":
        plan.notes.append("weak typing: the engine's island precisions are requested, not guaranteed; "
                          "the build checks them in the engine's layer information")
    if options.typing_mode == "weak" and options.major == 10:
        plan.notes.append("weak typing is deprecated from TensorRT 10.12 on (trtexec --fp16/--int8 and "
                          "ILayer.precision print deprecation warnings) and removed in 11: prefer --typing strong")
    if options.dla_core is not None:
        plan.notes.append("DLA: layers DLA cannot run (the attention's MatMuls among them) fall back to the GPU")
    if options.dla_core is not None and options.major >= 11:
        plan.notes.append("DLA on TensorRT 11 needs 11.4.1 or newer under JetPack 7.2.2+ (Jetson AGX Orin only; "
                          "11.0-11.4.0 have no DLA); the build refuses older releases")
    plan.trtexec = p.trtexec_argv(plan)
    return plan
