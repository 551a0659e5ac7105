"""TFLite (LiteRT): litert-torch converts, ai-edge-quantizer quantises, ai-edge-litert runs.

The work is in ``evit_deploy.tflite`` (``convert``, ``quantize``, ``graph``, ``export``, ``runner``).

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

from pathlib import Path
from typing import TYPE_CHECKING

from evit_deploy.contracts import ArtifactFacts, ExportContext, ExportOutput, Runner
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, Precision
from evit_deploy.targets.base import Target, register
from evit_deploy.tflite.options import INSTALL_HINT, TfliteOptions, missing

if TYPE_CHECKING:
    import torch

    from evit_deploy.configs import Recipe
    from evit_deploy.manifest import Manifest


@register("litert", "tfl")
class TfliteTarget(Target[TfliteOptions]):
    name = "tflite"
    extensions = (".tflite",)
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8)
    options_model = TfliteOptions
    description = "TFLite flatbuffer, run with LiteRT (XNNPACK) on Android/ARM/x86 CPUs"
    requires = INSTALL_HINT

    def available(self) -> str | None:
        return missing("litert_torch", "ai_edge_litert", "ai_edge_quantizer")

    def runtime_available(self, device: str = "cpu") -> str | None:
        return missing("ai_edge_litert")

    def check_recipe(self, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        if recipe.dynamic:
            raise UsageError("TFLite artifacts here are static: drop --dynamic and export one artifact per "
                             "input size (--resolution HxW, --batch N)")

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        from evit_deploy.tflite.export import export_artifact

        return export_artifact(model, spec, recipe.precision, self.options(recipe), ctx)

    def facts(self, manifest: Manifest, path: Path) -> ArtifactFacts:
        from evit_deploy.tflite.metadata import read_facts

        return read_facts(path)

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        from evit_deploy.tflite.runner import TfliteRunner

        if device != "cpu":
            raise UsageError(f"the LiteRT runner here runs on the CPU (XNNPACK); got --device {device!r}")
        return TfliteRunner(path, threads=threads, inputs=manifest.inputs or None, outputs=manifest.outputs or None)
