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
from typing import TYPE_CHECKING

from evit_deploy.contracts import ArtifactFacts, ExportContext, ExportOutput, Runner
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.targets.base import Target, register
from evit_deploy.trt.options import TrtOptions, check_options

if TYPE_CHECKING:
    import torch

    from evit_deploy.configs import Recipe
    from evit_deploy.manifest import Manifest

GPU_DEVICES = ("cuda", "gpu", "trt", "tensorrt")
ONNX_HINT = "pip install 'evit-deploy[onnx]'"


def _kind(device: str) -> str:
    """``cuda:0`` -> ``cuda``."""
    return device.lower().split(":", 1)[0]


@register("tensorrt")
class TensorRTTarget(Target[TrtOptions]):
    name = "trt"
    extensions = (".engine", ".plan")
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8)
    builds_on_device = True  # an engine runs only on the GPU and TensorRT it was built with
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

    def native_timing(self, device: str = "cpu") -> str | None:
        if _kind(device) in GPU_DEVICES:
            return self.runtime_available(device)
        return ("TensorRT latency needs an NVIDIA GPU; here the typed ONNX runs on ONNX Runtime, whose timings say "
                "nothing about an engine: run with --device cuda on a GPU machine")

    def options_for_here(self) -> dict[str, object]:
        from evit_deploy.trt.build import gpu_unavailable

        return {"plan_only": True} if gpu_unavailable() is not None else {}

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        options = self.options(recipe)
        check_options(options, recipe)
        if not options.plan_only:
            from evit_deploy.trt.build import gpu_unavailable

            reason = gpu_unavailable()
            if reason is not None:
                raise RuntimeMissing(
                    f"cannot build a TensorRT engine here: {reason}; add --plan-only to write the typed ONNX, "
                    "build plan and trtexec script, or build on the GPU machine with --device NAME (see `evit devices`)"
                )

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        from evit_deploy.onnx.layer_map import onnx_file_layer_map
        from evit_deploy.trt.export import export_artifact

        output = export_artifact(model, spec, recipe, self.options(recipe), ctx)
        output.details["layer_map"] = onnx_file_layer_map(output.files[0]).to_dict()  # for `evit debug`
        return output

    def facts(self, manifest: Manifest, path: Path) -> ArtifactFacts:
        """The typed ONNX's facts (an engine carries none evit can read without TensorRT)."""
        from evit_deploy.onnx.export import read_facts

        onnx_path = path if path.suffix == ".onnx" else self._file(manifest, path, ".onnx")
        return read_facts(onnx_path) if onnx_path is not None else ArtifactFacts()

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
        if manifest.precision != Precision.FP16:
            from evit_deploy.onnx.runner import OnnxRunner

            return OnnxRunner(onnx_path, device="cpu", threads=threads)
        plan_path = self._file(manifest, path, ".trt-plan.json")
        from evit_deploy.trt.emulated import EmulatedFp16Runner

        return EmulatedFp16Runner(onnx_path, plan_path, threads=threads)

    @staticmethod
    def _file(manifest: Manifest, path: Path, suffix: str) -> Path | None:
        """The artifact's file ending in ``suffix`` (listed in the manifest, present beside ``path``)."""
        for entry in manifest.files:
            if entry.path.endswith(suffix):
                candidate = path.parent / entry.path
                return candidate if candidate.is_file() else None
        return None
