"""The TFLite target's recipe options, and what it needs installed."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from evit_deploy.accuracy_control import ControlOptions
from evit_deploy.contracts import comma_list
from evit_deploy.dependencies import missing_modules

INSTALL_HINT = "pip install 'evit-deploy[tflite]'"

FloatIsland = Literal["attention", "hardswish", "head", "bicubic"]

class TfliteOptions(ControlOptions):
    """``options:`` of a ``target: tflite`` recipe; int8 accuracy control (``min_agreement``) from ``ControlOptions``."""

    layout: Literal["nhwc", "nchw"] = "nhwc"  # of the input and of 4-D outputs
    bicubic: Literal["exact", "converter"] = "exact"  # conv rewrite, or litert-torch's gather lowering
    # int8's float islands (tflite.quantize.int8_plan; bicubic: Graph.upsampling_convs)
    keep_float: list[FloatIsland] = Field(default_factory=lambda: ["attention", "hardswish", "head", "bicubic"])
    fp16_fp32_share: float = Field(0.1, ge=0.0, le=1.0)  # fp16: smallest weight tensors, up to this share, stay fp32
    # activation ranges: the least-error clip of the extremes (evit_deploy.activation_ranges), the
    # extremes over the calibration images, ai-edge-quantizer's moving average, or by task (auto:
    # tflite.quantize.chosen_ranges)
    int8_ranges: Literal["auto", "mse", "min_max", "moving_average"] = "auto"

    @field_validator("layout", "bicubic", "int8_ranges", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("keep_float", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return comma_list(value)


_DISTRIBUTIONS = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert",
                  "ai_edge_quantizer": "ai-edge-quantizer"}


def missing(*modules: str) -> str | None:
    return missing_modules(INSTALL_HINT, *modules, names=_DISTRIBUTIONS)
