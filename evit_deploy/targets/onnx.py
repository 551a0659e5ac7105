"""ONNX: torch's dynamo exporter, optional simplification, fp16 with fp32 islands, int8 (Q/DQ), ONNX Runtime.

The work is in ``evit_deploy.onnx``; this adapter names the target and what it needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evit_deploy.contracts import ArtifactFacts, ExportContext, ExportOutput, Runner
from evit_deploy.dependencies import missing_modules
from evit_deploy.onnx.options import INSTALL_HINT, OnnxOptions
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.targets.base import Target, register

if TYPE_CHECKING:
    import torch

    from evit_deploy.configs import Recipe
    from evit_deploy.manifest import Manifest


@register("ort", "onnxruntime")
class OnnxTarget(Target[OnnxOptions]):
    name = "onnx"
    extensions = (".onnx",)
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8)
    options_model = OnnxOptions
    description = "ONNX graph, run with ONNX Runtime (any platform)"
    requires = INSTALL_HINT

    def available(self) -> str | None:
        return missing_modules(INSTALL_HINT, "onnx", "onnxscript", "onnxruntime")

    def runtime_available(self, device: str = "cpu") -> str | None:
        return missing_modules(INSTALL_HINT, "onnxruntime")

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        from evit_deploy.onnx.export import export_artifact

        return export_artifact(model, spec, recipe, self.options(recipe), ctx)

    def facts(self, manifest: Manifest, path: Path) -> ArtifactFacts:
        from evit_deploy.onnx.export import read_facts

        return read_facts(path)

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        from evit_deploy.onnx.runner import OnnxRunner

        return OnnxRunner(path, device=device, threads=threads, session=self.recorded_options(manifest, path))

    def recorded_options(self, manifest: Manifest, path: Path) -> OnnxOptions:
        """The options an artifact runs with: its recipe's (as made), with the session settings of its runner
        section (``details.runner``) over them: written from the recipe at export, and the place a device's
        measurement of other settings is recorded. Validated with the manifest named."""
        recorded = {**manifest.recipe.options, **manifest.details.get("runner", {})}
        return self.options(manifest.recipe.model_copy(update={"options": recorded}), f"{path.name}'s manifest")
