"""TensorRT (Jetson, datacenter GPUs): a typed ONNX, its build plan, and on a GPU the engine.

The primary artifact is the ONNX TensorRT builds (``NAME.onnx``):

* strong typing (TensorRT 10 with ``--stronglyTyped``, 11 always; the default): the ONNX
  carries the precisions. fp16 = fp16 weights and activations with the LiteMLA attention and
  the resizes in fp32 behind explicit Casts (the ONNX target's own pass); int8 = Q/DQ,
  calibrated here on the CPU, islands unquantised in fp32; fp32 = the exported graph.
* weak typing (TensorRT 8.5/8.6 on JetPack 5/6.0; selectable on 10): the fp32 ONNX (int8: the
  Q/DQ ONNX) plus ``trtexec --fp16 --precisionConstraints=obey --layerPrecisions=...`` naming
  the same island nodes.

Beside it: ``NAME.trt-plan.json`` and ``NAME.trtexec.sh`` (``evit_deploy.trt.plan``), and,
unless ``--plan-only``, ``NAME.engine`` + ``NAME.layers.json`` built and checked here with
the TensorRT Python API (``evit_deploy.trt.build``). The typed graph is checked for fp16
overflow on ONNX Runtime at the export shape and at ``--max-shape`` before anything is written.

Runners: ``--device cpu`` runs the typed ONNX on ONNX Runtime (what ``evit verify`` does on a
machine without a GPU), fp16 through an exact emulation (every fp16 tensor rounded where it is
made: ORT's CPU kernels would compute fp16 chains in fp32); ``--device cuda`` runs the engine.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evit_deploy.configs import validate_options
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.spec import InputSpec
from evit_deploy.targets.base import ExportContext, ExportOutput, Runner, Target, package_versions, register
from evit_deploy.targets.onnx import OnnxRunner
from evit_deploy.trt.options import Profile, TrtOptions, check_options, resolve_profile

if TYPE_CHECKING:
    import onnx
    import torch

    from evit_deploy.artifact import Manifest
    from evit_deploy.configs import Recipe

GPU_DEVICES = ("cuda", "gpu", "trt", "tensorrt")
ONNX_HINT = "pip install 'evit-deploy[onnx]'"


def _kind(device: str) -> str:
    """``cuda:0`` -> ``cuda``."""
    return device.lower().split(":", 1)[0]


def _options(recipe: Recipe) -> TrtOptions:
    options = validate_options(recipe, TrtOptions)
    assert isinstance(options, TrtOptions)
    return options


@register("tensorrt")
class TensorRTTarget(Target):
    name = "trt"
    extensions = (".engine", ".plan")
    precisions = ("fp32", "fp16", "int8")
    options_model = TrtOptions
    description = "TensorRT: typed ONNX + build plan + trtexec script; the engine on an NVIDIA GPU"
    requires = f"plan: {ONNX_HINT}; engine: pip install 'evit-deploy[tensorrt]' + an NVIDIA GPU"

    def available(self) -> str | None:
        absent = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        return f"{', '.join(absent)} not installed; {ONNX_HINT}" if absent else None

    def runtime_available(self, device: str = "cpu") -> str | None:
        if _kind(device) in GPU_DEVICES:
            from evit_deploy.trt.build import gpu_unavailable

            reason = gpu_unavailable()
            return f"{reason}; run the typed ONNX with --device cpu instead" if reason else None
        return None if importlib.util.find_spec("onnxruntime") else f"onnxruntime not installed; {ONNX_HINT}"

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        options = _options(recipe)
        check_options(options, recipe)
        if not options.plan_only:
            from evit_deploy.trt.build import gpu_unavailable

            reason = gpu_unavailable()
            if reason is not None:
                raise RuntimeMissing(
                    f"cannot build a TensorRT engine here: {reason}; add --plan-only to write the typed ONNX, "
                    "build plan and trtexec script, or build on the GPU machine with --device NAME (see `evit devices`)"
                )

    # ------------------------------------------------------------------ export

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        import onnx

        from evit_deploy.targets.onnx import (
            OnnxOptions,
            add_metadata,
            check_and_save,
            export_onnx_graph,
            simplify,
            tensor_infos,
        )
        from evit_deploy.trt import typed

        options = _options(recipe)
        profile = resolve_profile(options, spec)
        precision = recipe.precision
        ctx.progress(f"torch.onnx.export (dynamo, opset {options.opset})")
        graph = export_onnx_graph(model, spec, OnnxOptions(opset=options.opset, simplify=options.simplify), ctx.workdir)
        if options.simplify != "none":
            graph = simplify(graph, options.simplify)
        typed.name_all_nodes(graph)  # the names the plan, trtexec and TensorRT's layers share
        islands = typed.select_islands(graph, options.keep_fp32) if precision != "fp32" else []
        notes: list[str] = []
        details: dict[str, Any] = {}

        # the graph TensorRT builds
        int8_info = None
        if precision == "int8":
            build, int8_info = self._int8(graph, spec, recipe, options, islands, ctx)
        elif precision == "fp16" and options.typing_mode == "strong":
            ctx.progress("fp16 with fp32 islands behind Casts")
            build = typed.to_fp16(graph, islands)
        else:
            build = graph  # fp32, or fp16 by weak typing (trtexec --fp16 + per-layer fp32)

        # what fp16 will compute, checked for overflow at the export shape and --max-shape
        overflow = None
        if precision == "fp16" and options.overflow_check:
            simulated = build if options.typing_mode == "strong" else typed.to_fp16(graph, islands)
            overflow = self._overflow(simulated, spec, profile, options, ctx)
        elif precision == "fp16":
            notes.append("fp16 overflow check skipped (overflow_check: false)")

        add_metadata(build, spec, ctx, precision)
        onnx_path = ctx.workdir / f"{ctx.model_name}.onnx"
        final = check_and_save(build, onnx_path)
        plan = self._plan(final, onnx_path, islands, spec, profile, recipe, options, ctx, int8_info, overflow)
        plan_path = ctx.workdir / f"{ctx.model_name}.trt-plan.json"
        plan.save(plan_path)
        from evit_deploy.trt.plan import script

        script_path = ctx.workdir / f"{ctx.model_name}.trtexec.sh"
        script_path.write_text(script(plan, plan_path.name))
        script_path.chmod(0o755)
        files = [onnx_path, plan_path, script_path]
        details["plan"] = plan.summary()
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
        converter = {"onnx": onnx.__version__, **package_versions("onnxscript", "onnxruntime", "tensorrt")}
        return ExportOutput(files=files, converter=converter, inputs=tensor_infos(final, "input"),
                            outputs=tensor_infos(final, "output"), notes=notes, details=details)

    def _int8(self, graph: onnx.ModelProto, spec: InputSpec, recipe: Recipe, options: TrtOptions,
              islands: list[Any], ctx: ExportContext) -> tuple[onnx.ModelProto, dict[str, Any]]:
        from evit_deploy.trt import int8

        source = recipe.calibration.source
        if ctx.calibration is None or source is None:
            raise UsageError("int8 needs calibration images: pass --calib DIR (a folder of representative images)")
        one = spec.with_resolution(spec.height, spec.width, batch=1)
        material = {
            "images": int8.image_digests(Path(source)),
            "samples": recipe.calibration.samples,
            "preprocessing": {"size": [one.height, one.width], "mean": list(one.mean), "std": list(one.std),
                              "color": one.color, "crop_ratio": one.extra.get("crop_ratio"),
                              "resize": "bicubic, shorter side + centre crop" if one.extra.get("crop_ratio")
                              else "bicubic to size"},
            "model": int8.sha256_bytes(graph.SerializeToString()),
        }
        exclude = [n for island in islands for n in island.nodes]
        calibration = ctx.calibration(one)
        ctx.progress(f"int8: Q/DQ on {', '.join(options.quantize_ops)}; {len(exclude)} island node(s) stay fp32")
        return int8.quantize_qdq(graph, calibration, input_name=spec.name, exclude=exclude,
                                 op_types=options.quantize_ops, method=options.calib_method,
                                 key_material=material, progress=ctx.progress)

    def _overflow(self, simulated: onnx.ModelProto, spec: InputSpec, profile: Profile | None, options: TrtOptions,
                  ctx: ExportContext) -> dict[str, Any]:
        """Scan the fp16 graph at the export shape and, with a profile, at its max shape."""
        from evit_deploy.data import random_batch
        from evit_deploy.trt.typed import raise_on_overflow, scan_fp16

        shapes = [("export shape", spec.height, spec.width)]
        if profile is not None and (profile.max[2], profile.max[3]) != (spec.height, spec.width):
            shapes.append(("--max-shape", profile.max[2], profile.max[3]))
        results = {}
        for where, h, w in shapes:
            at = spec.with_resolution(h, w, batch=1)
            if ctx.calibration is not None:
                inputs = ctx.calibration(at)[: options.overflow_samples]
                source = "calibration images"
            else:
                inputs = [random_batch(at, 0, i) for i in range(options.overflow_samples)]
                source = "random pixels (seed 0)"
            ctx.progress(f"fp16 overflow check at {h}x{w} ({where}) on ONNX Runtime")
            scan = scan_fp16(simulated, inputs, spec.name)
            results[where] = {**scan.to_dict(), "inputs": source}
            raise_on_overflow(scan, where)
        return results

    def _plan(self, final: onnx.ModelProto, onnx_path: Path, islands: list[Any], spec: InputSpec,
              profile: Profile | None, recipe: Recipe, options: TrtOptions, ctx: ExportContext,
              int8_info: dict[str, Any] | None, overflow: dict[str, Any] | None) -> Any:
        from evit_deploy.artifact import sha256_path
        from evit_deploy.graph import islands_summary
        from evit_deploy.trt import plan as p
        from evit_deploy.trt import typed

        summary = [p.Island(**i) for i in islands_summary(islands)]
        outputs = typed.float_outputs(final, {n for island in summary for n in island.nodes})
        expected = p.expectations(summary, typed.node_ops(final), outputs)
        outside = typed.fp32_outside_islands(final, islands) if recipe.precision == "fp16" and \
            options.typing_mode == "strong" else []
        precisions, output_types = ({}, {})
        if options.typing_mode == "weak" and recipe.precision != "fp32":
            precisions, output_types = p.weak_typing_constraints(expected, typed.output_counts(final))
        name = ctx.model_name
        plan = p.BuildPlan(
            model=ctx.model_name, task=ctx.task, precision=recipe.precision, trt_version=options.trt_version,
            trt_major=options.major, typing=options.typing_mode, platform=options.platform,
            onnx=onnx_path.name, onnx_sha256=sha256_path(onnx_path), engine=f"{name}.engine",
            layer_info=f"{name}.layers.json", input_name=spec.name,
            output_names=[o.name for o in final.graph.output],
            static_shape=None if profile else list(spec.shape), profile=profile.to_dict() if profile else None,
            workspace_gib=options.workspace, dla_core=options.dla_core,
            builder_optimization_level=options.builder_opt_level,
            timing_cache=options.timing_cache.name if options.timing_cache else None,
            tf32=recipe.precision != "fp32",
            islands=summary, fp32_outside_islands=[p.Fp32Outside(**o) for o in outside], expected_layers=expected,
            island_tensors=[t for e in expected for t in e.outputs],
            layer_precisions=precisions, layer_output_types=output_types, int8=int8_info, overflow=overflow,
        )
        if recipe.precision == "fp32":
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

    # ------------------------------------------------------------------ run

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        """``cuda``: the engine (primary after a GPU or device build, else beside the typed ONNX);
        ``cpu``: the typed ONNX on ONNX Runtime."""
        if _kind(device) in GPU_DEVICES:
            engine = path if path.suffix in (".engine", ".plan") else self._file(manifest, path, ".engine")
            if engine is None:
                raise UsageError(f"{path.name} has no engine beside it (exported with --plan-only?): build it on the "
                                 "GPU machine with the .trtexec.sh script or `python -m evit_deploy.trt.build "
                                 "NAME.trt-plan.json`, or run the typed ONNX with --device cpu")
            from evit_deploy.trt.runtime import TrtRunner

            return TrtRunner(engine)
        if _kind(device) != "cpu":
            raise UsageError(f"unknown device {device!r} for a TensorRT artifact; use cpu (the typed ONNX on "
                             "ONNX Runtime) or cuda (the engine)")
        onnx_path = path if path.suffix == ".onnx" else self._file(manifest, path, ".onnx")
        if onnx_path is None:
            raise UsageError(f"{path.name}: its manifest lists no typed ONNX to run on the CPU; run it with --device cuda")
        if manifest.precision != "fp16":
            return OnnxRunner(onnx_path, device="cpu", threads=threads)
        plan_path = self._file(manifest, path, ".trt-plan.json")
        return EmulatedFp16Runner(onnx_path, plan_path, threads=threads)

    @staticmethod
    def _file(manifest: Manifest, path: Path, suffix: str) -> Path | None:
        """The artifact's file ending in ``suffix`` (listed in the manifest, present beside ``path``)."""
        for entry in manifest.files:
            if entry.path.endswith(suffix):
                candidate = path.parent / entry.path
                return candidate if candidate.is_file() else None
        return None


class EmulatedFp16Runner(OnnxRunner):
    """The fp16 the engine computes, on ONNX Runtime's CPU provider: the typed ONNX with every
    fp16 tensor rounded where it is made (``evit_deploy.trt.typed.emulate_fp16``; ORT's CPU
    kernels would otherwise compute fp16 chains in fp32). A weakly typed plan's fp32 ONNX is
    first given the fp16 types the build asks for (fp16 outside the plan's islands)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, plan_path: Path | None, *, threads: int | None = None) -> None:
        super().__init__(path, device="cpu", threads=threads)
        self.source = path
        self.plan_path = plan_path
        self._tmp: Any = None

    def load(self) -> None:
        import tempfile

        import onnx

        from evit_deploy.trt.plan import BuildPlan
        from evit_deploy.trt.typed import emulate_fp16, to_fp16

        model = onnx.load(str(self.source))
        plan = BuildPlan.load(self.plan_path) if self.plan_path is not None else None
        if plan is not None and plan.typing == "weak":
            from evit_deploy.graph import Island

            model = to_fp16(model, [Island(kind=i.kind, nodes=i.nodes, reason=i.reason) for i in plan.islands])
        emulated, _ = emulate_fp16(model)
        self._tmp = tempfile.TemporaryDirectory(prefix="evit-fp16-")
        self.path = Path(self._tmp.name) / self.source.name
        onnx.save(emulated, str(self.path))
        super().load()

    def close(self) -> None:
        super().close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.path = self.source

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fp16": "emulated: every fp16 tensor rounded to fp16 where it is made"}
