"""Core ML: coremltools (torch.export -> ML program ``.mlpackage``); runs on macOS, checked anywhere.

The work is in ``evit_deploy.coreml`` (``export``, ``precision``, ``compress``, ``rewrite``, ``runner``).

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

import os
from pathlib import Path
from typing import TYPE_CHECKING

from evit_deploy.contracts import ArtifactFacts, ExportContext, ExportOutput, Runner
from evit_deploy.coreml.options import COMPRESSION_MIN, CoreMLOptions, device_compute_units
from evit_deploy.coreml.tools import INSTALL_HINT, coremltools_missing, macos_runtime_missing
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.targets.base import Target, register

if TYPE_CHECKING:
    import torch

    from evit_deploy.configs import Recipe
    from evit_deploy.manifest import Manifest


def _mil_forced() -> bool:
    """``EVIT_COREML_RUNNER=mil``: the interpreter even where the Core ML runtime exists (to compare both)."""
    return os.environ.get("EVIT_COREML_RUNNER") == "mil"


@register("mlpackage", "coremltools", "mlprogram")
class CoreMLTarget(Target[CoreMLOptions]):
    name = "coreml"
    extensions = (".mlpackage",)
    precisions = (Precision.FP32, Precision.FP16)
    options_model = CoreMLOptions
    description = "Core ML ML program (.mlpackage) for iPhone, iPad and Mac; checked on Linux by a MIL interpreter"
    requires = INSTALL_HINT

    def available(self) -> str | None:
        return coremltools_missing()

    def runtime_available(self, device: str = "cpu") -> str | None:
        # The MIL interpreter needs only coremltools' protobuf modules (no runtime, no torch).
        try:
            device_compute_units(device)
        except UsageError as err:
            return str(err)
        return coremltools_missing()

    def timing_available(self, device: str = "cpu") -> str | None:
        if not _mil_forced() and macos_runtime_missing() is None:
            return None
        return ("Core ML latency needs macOS with the Core ML runtime; here evit can only check the program with its "
                "MIL interpreter (numpy), whose timings say nothing about an Apple device: run `evit profile` on a "
                "Mac, or pass --device NAME with a Mac from your device inventory (see `evit devices`)")

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        options = self.options(recipe)
        if recipe.dynamic:
            raise UsageError("Core ML export here is static (one input size per .mlpackage); drop --dynamic and "
                             "export one artifact per resolution")
        if options.compress != "none" and options.level < COMPRESSION_MIN:
            raise UsageError(f"--compress {options.compress} needs --deployment-target iOS16 / macOS13 or newer "
                             f"(weight compression ops arrived there), not {options.deployment_target}")
        if options.image_input and recipe.batch != 1:
            raise UsageError("--image-input takes one image per prediction: use --batch 1 (or a tensor input)")

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        from evit_deploy.coreml.export import export_artifact

        return export_artifact(model, spec, recipe.precision, self.options(recipe), ctx)

    def facts(self, manifest: Manifest, path: Path) -> ArtifactFacts:
        from evit_deploy.coreml.metadata import read_facts

        return read_facts(path)

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        from evit_deploy.coreml.runner import CoreMLRunner, MilRunner

        options = self.options(manifest.recipe, f"{path.name}'s manifest")
        units = device_compute_units(device) or options.compute_units
        spec = manifest.input
        if not _mil_forced() and macos_runtime_missing() is None:
            return CoreMLRunner(path, spec, compute_units=units, image_input=options.image_input)
        return MilRunner(path, spec, image_input=options.image_input)
