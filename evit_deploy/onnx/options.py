"""The ONNX target's recipe options (the TensorRT target reuses the export half)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from evit_deploy.contracts import TargetOptions, comma_list

INSTALL_HINT = "pip install 'evit-deploy[onnx]'"
# The opsets each of torch 2.13's exporters writes (torch.onnx._constants): the dynamo exporter
# raises anything below 18 to 18, so a lower request would be recorded but not made.
OPSETS = {"dynamo": (18, 23), "torchscript": (7, 20)}


class OnnxOptions(TargetOptions):
    opset: int = 18
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    simplify: Literal["onnxslim", "onnxsim", "none"] = "none"
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"  # ORT, at load time
    keep_fp32: list[Literal["attention", "resize"]] = Field(default_factory=lambda: ["attention", "resize"])
    # int8 (evit_deploy.onnx.int8): the Q/DQ scheme ORT's CPU kernels run fastest, chosen by measurement
    int8_scheme: Literal["qdq-u8s8", "qdq-s8s8", "qoperator-u8s8"] = "qdq-u8s8"
    quantize_ops: list[Literal["Conv", "Gemm", "MatMul", "Add", "Mul"]] = Field(default_factory=lambda: ["Conv", "Add"])
    calib_method: Literal["minmax", "entropy", "percentile"] = "percentile"
    # more nodes to keep float: node names or module paths (a path keeps every node under it)
    keep_float: list[str] = Field(default_factory=list)

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
