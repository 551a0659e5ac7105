"""A TFLite model cut to the ops between some tensors, and int8 tensors to and from float.

What running one layer alone needs: ``evit debug`` (the error a layer adds by itself) and
int8 accuracy control (which layers add the most) both cut the flatbuffer at a layer's
inputs and feed it reference values quantised as the op before it would have.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class CutError(ValueError):
    """The ops making the output read a tensor outside the given inputs; ``str`` says which."""


def cut(model: Any, inputs: list[int], output: int) -> bytes:
    """The flatbuffer (``model``: its parsed object tree, left as it was) reduced to the ops that
    turn ``inputs`` into ``output``; tensor indices are kept."""
    from ai_edge_litert.tools import flatbuffer_utils

    subgraph = model.subgraphs[0]
    producer = {int(t): i for i, op in enumerate(subgraph.operators) for t in op.outputs if t >= 0}
    keep: set[int] = set()
    stack = [output]
    given = set(inputs)
    while stack:
        tensor = stack.pop()
        if tensor in given or is_constant(model, tensor):
            continue
        if tensor not in producer:
            raise CutError(f"it also reads tensor {tensor}, which is not one of its mapped inputs")
        op = producer[tensor]
        if op not in keep:
            keep.add(op)
            stack.extend(int(t) for t in subgraph.operators[op].inputs if t >= 0)
    whole = (subgraph.operators, subgraph.inputs, subgraph.outputs, model.signatureDefs)
    kept_ops = [op for i, op in enumerate(subgraph.operators) if i in keep]
    used = {int(subgraph.tensors[t].buffer) for op in kept_ops for t in (*op.inputs, *op.outputs) if t >= 0}
    # the other ops' weights are left out of the copy: a cut costs its own bytes, not the model's
    dropped = {b: buffer.data for b, buffer in enumerate(model.buffers) if b not in used and buffer.data is not None}
    try:
        subgraph.operators = kept_ops
        subgraph.inputs = np.array(inputs, dtype=np.int32)
        subgraph.outputs = np.array([output], dtype=np.int32)
        model.signatureDefs = []  # the signature names the whole model's inputs and outputs
        for b in dropped:
            model.buffers[b].data = None
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    finally:
        subgraph.operators, subgraph.inputs, subgraph.outputs, model.signatureDefs = whole
        for b, data in dropped.items():
            model.buffers[b].data = data


def is_constant(model: Any, tensor: int) -> bool:
    buffer = model.buffers[model.subgraphs[0].tensors[tensor].buffer]
    return buffer.data is not None and len(buffer.data) > 0


def dequantised(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if value.dtype.kind not in "iu" or value.dtype == np.int32:  # float, or int32 indices and shapes
        return value.astype(np.float32, copy=False)
    scales, zeros = _quantisation(detail, value.ndim)
    return ((value.astype(np.float32) - zeros) * scales).astype(np.float32)


def quantised(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu":
        return np.ascontiguousarray(value.astype(dtype))
    scales, zeros = _quantisation(detail, value.ndim)
    info = np.iinfo(dtype)
    return np.ascontiguousarray(np.clip(np.round(value / scales) + zeros, info.min, info.max).astype(dtype))


def _quantisation(detail: dict[str, Any], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point, shaped to broadcast along the quantised axis when per channel."""
    params = detail.get("quantization_parameters", {})
    scales = np.asarray(params.get("scales", []), dtype=np.float32).reshape(-1)
    zeros = np.asarray(params.get("zero_points", []), dtype=np.float32).reshape(-1)
    if scales.size == 0:
        return np.ones(1, np.float32), np.zeros(1, np.float32)
    if zeros.size != scales.size:
        zeros = np.zeros_like(scales)
    if scales.size > 1:
        shape = [1] * ndim
        shape[int(params.get("quantized_dimension", 0))] = scales.size
        return scales.reshape(shape), zeros.reshape(shape)
    return scales, zeros
