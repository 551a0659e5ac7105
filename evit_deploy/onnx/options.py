"""The ONNX target's recipe options (the TensorRT target reuses the export half)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from evit_deploy.contracts import TargetOptions

INSTALL_HINT = "pip install 'evit-deploy[onnx]'"


class OnnxOptions(TargetOptions):
    opset: int = 18
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    simplify: Literal["onnxslim", "onnxsim", "none"] = "none"
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"  # ORT, at load time
    keep_fp32: list[Literal["attention", "resize"]] = Field(default_factory=lambda: ["attention", "resize"])
