"""int8 for TensorRT: the shared Q/DQ quantiser (``evit_deploy.onnx.qdq``) in TensorRT's scheme.

TensorRT 11 has no calibrators, so the quantisation lives in the ONNX (explicit quantisation):
symmetric int8 with zero point 0, per-channel weights on the output-channel axis, fp32 bias, and
Q/DQ only on the inputs of the op types in ``quantize_ops`` (Conv by default: where EfficientViT's
compute is; TensorRT fuses DQ -> Conv and keeps the output in float until the next Q). The fp32
islands (the LiteMLA attention, the resizes) are excluded by node name, so they stay fp32.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.onnx.qdq import CACHE_ENV, TENSORRT, cache_dir, cache_key
from evit_deploy.onnx.qdq import quantize_qdq as _quantize

if TYPE_CHECKING:
    import onnx

__all__ = ["CACHE_ENV", "cache_dir", "cache_key", "quantize_qdq"]


def quantize_qdq(model: onnx.ModelProto, calibration: Iterable[np.ndarray] | None, *, input_name: str,
                 exclude: list[str], op_types: list[str], method: str, key_material: dict[str, Any],
                 progress: Any = lambda message: None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The Q/DQ ONNX TensorRT builds, and what its plan records about the calibration."""
    return _quantize(model, calibration, input_name=input_name, exclude=exclude, op_types=op_types, method=method,
                     key_material=key_material, scheme=TENSORRT, progress=progress)
