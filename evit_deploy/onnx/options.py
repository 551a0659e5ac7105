"""The ONNX target's recipe options (the TensorRT target reuses the export half).

Two groups: how the graph is made (``opset`` .. ``keep_fp32``), and how ONNX Runtime runs it
(``graph_optimization``, ``spinning``, ``memory_arena``). The second group, resolved, is the
manifest's runner section (``details.runner``): ``verify`` and ``profile`` open the artifact
with it, here and on devices, so an artifact is timed the way it was measured
(benchmarks/results/onnx_speed.json).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from evit_deploy.accuracy_control import ControlOptions
from evit_deploy.contracts import comma_list

INSTALL_HINT = "pip install 'evit-deploy[onnx]'"
GraphOptimization = Literal["disable", "basic", "extended", "all"]
RUNNER_FIELDS = frozenset({"graph_optimization", "spinning", "memory_arena"})
# The opsets each of torch 2.13's exporters writes (torch.onnx._constants): the dynamo exporter
# raises anything below 18 to 18, so a lower request would be recorded but not made.
OPSETS = {"dynamo": (18, 23), "torchscript": (7, 20)}


class OnnxOptions(ControlOptions):
    """``options:`` of a ``target: onnx`` recipe; int8 accuracy control (``min_agreement``) from ``ControlOptions``."""

    opset: int = 18
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    simplify: Literal["onnxslim", "onnxsim", "none"] = "none"
    # "exact": the seg head's bicubic upsampling as edge pad + depthwise conv + pixel shuffle
    # (evit_deploy.convert.bicubic, ~1e-7 from F.interpolate); ORT's cubic Resize is a slow
    # single-threaded kernel (about a third of seg-B1's time at 512x1024). "resize": keep the Resize.
    bicubic: Literal["exact", "resize"] = "exact"
    keep_fp32: list[Literal["attention", "layernorm", "resize"]] = Field(
        default_factory=lambda: ["attention", "layernorm", "resize"])
    # int8 (evit_deploy.onnx.int8): the Q/DQ scheme ORT's CPU kernels run fastest, chosen by measurement;
    # qdq-u8u8 for x86 CPUs without VNNI, where u8s8 saturates (evit_deploy.machine.u8s8_saturates)
    int8_scheme: Literal["qdq-u8s8", "qdq-s8s8", "qdq-u8u8", "qoperator-u8s8"] = "qdq-u8s8"
    quantize_ops: list[Literal["Conv", "Gemm", "MatMul", "Add", "Mul"]] = Field(default_factory=lambda: ["Conv", "Add"])
    # "int8": each HardSwish written as x * Clip(x + 3, 0, 6) / 6 and quantised (evit_deploy.onnx.hardswish:
    # ORT has no int8 HardSwish); "float": ORT runs it in float between DequantizeLinear and QuantizeLinear
    int8_hardswish: Literal["int8", "float"] = "int8"
    # activation ranges: "mse" (least expected int8 error, taken after the HardSwish that reads a
    # tensor: evit_deploy.activation_ranges) or onnxruntime's calibrators; "auto": mse for dense
    # outputs (segmentation, SAM), percentile for classifiers (onnx.int8.chosen_method)
    calib_method: Literal["auto", "mse", "minmax", "entropy", "percentile"] = "auto"
    # more nodes to keep float: node names or module paths (a path keeps every node under it)
    keep_float: list[str] = Field(default_factory=list)
    # ONNX Runtime session, at load time. "all" adds the NCHWc convolutions (2.2x over "extended"
    # on seg-B1). Spinning keeps idle pool threads polling between operators: it saves a wake-up per
    # operator on an idle machine, and on a busy one takes the CPU the other threads need (seg-B1,
    # 2 threads, other processes running: 1065 ms with it, 605 without), so it is off by default.
    graph_optimization: GraphOptimization = "all"
    spinning: bool = False
    memory_arena: bool = True

    def runner_section(self) -> dict[str, object]:
        """The ONNX Runtime session settings, for the manifest's ``details.runner``."""
        return self.model_dump(include=set(RUNNER_FIELDS))

    @field_validator("keep_fp32", "quantize_ops", "keep_float", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return comma_list(value)

    @model_validator(mode="after")
    def _opset_in_range(self) -> OnnxOptions:
        low, high = OPSETS[self.exporter]
        if not low <= self.opset <= high:
            raise PydanticCustomError(
                "opset", "opset {opset} is out of range: the {exporter} exporter writes opsets {low} to {high}",
                {"opset": self.opset, "exporter": self.exporter, "low": low, "high": high})
        return self
