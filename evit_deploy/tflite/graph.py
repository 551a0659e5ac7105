"""A .tflite's main subgraph as op records, the walks that find its float islands, and op marking.

Islands are found from the graph's structure (what lies between LiteMLA's projections, what
follows the last feature map), never from op names, so they survive converter changes.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

# Ops whose weights are the model's bulk: an int8/fp16 float island never extends past them.
COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
QUANT_OPS = {"QUANTIZE", "DEQUANTIZE"}
FLOAT16 = 1  # schema TensorType values
INTEGER_TYPES = {2, 7, 9}  # INT32, INT16, INT8




class Graph:
    """The main subgraph of a .tflite as op records: type, scope (AEQ's op id), tensors."""

    def __init__(self, content: bytes) -> None:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils

        self.model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        subgraph = self.model.subgraphs[0]
        self.tensors = subgraph.tensors
        self.outputs = [int(i) for i in subgraph.outputs]
        self.ops: list[dict[str, Any]] = []
        for index, op in enumerate(subgraph.operators):
            code = flatbuffer_utils.get_builtin_code_from_operator_code(self.model.operatorCodes[op.opcodeIndex])
            outputs = [int(i) for i in op.outputs if i >= 0]
            names = [self.tensor_name(i) for i in outputs]
            self.ops.append({
                "index": index,
                "type": codes.get(code, f"OP_{code}"),
                "inputs": [int(i) for i in op.inputs if i >= 0],
                "outputs": outputs,
                # ai-edge-quantizer's op scope: output tensor names joined by ';' plus a trailing ';'
                "scope": ";".join(n for n in names if n) + (";" if any(names) else ""),
            })
        self.producer = {t: op["index"] for op in self.ops for t in op["outputs"]}
        self.consumers: dict[int, list[int]] = {}
        for op in self.ops:
            for t in op["inputs"]:
                self.consumers.setdefault(t, []).append(op["index"])

    def tensor_name(self, index: int) -> str:
        return self.name_of(self.tensors[index])

    @staticmethod
    def name_of(tensor: Any) -> str:
        name = tensor.name
        return name.decode() if isinstance(name, bytes) else (name or "")

    def activation_sizes(self) -> list[int]:
        """Bytes of each tensor an op writes, for one input."""
        itemsize = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1}  # FLOAT32, FLOAT16, INT32, UINT8, INT64, BOOL, ...
        return [int(np.prod(self.tensors[t].shape, dtype=np.int64)) * itemsize.get(int(self.tensors[t].type), 4)
                for t in self.producer]

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op["type"] for op in self.ops).items(), key=lambda kv: (-kv[1], kv[0])))

    def attention_islands(self) -> list[list[int]]:
        """Ops connected to each DIV through non-compute ops: LiteMLA's core, one list per block.

        Walking both ways from the normaliser's DIV and stopping at convolutions/FCs collects
        exactly what lies between the qkv projections and the output projection, whatever
        reshapes and transposes the converter put there.
        """
        def neighbours(index: int) -> list[int]:
            op = self.ops[index]
            around = [self.producer[t] for t in op["inputs"] if t in self.producer]
            around += [c for t in op["outputs"] for c in self.consumers.get(t, [])]
            return [n for n in around if self.ops[n]["type"] not in COMPUTE_OPS]

        islands: list[list[int]] = []
        seen: set[int] = set()
        for seed in (op["index"] for op in self.ops if op["type"] == "DIV"):
            if seed not in seen:
                island = self._reach([seed], neighbours)
                seen |= island
                islands.append(sorted(island))
        return islands

    def head_ops(self) -> list[int]:
        """The ops that turn the last feature map into the outputs: the classifier.

        Walking back from the outputs: for a 2-D output (classification) everything after the
        global average pool, the pool included (FCs, the LayerNorm, activations); for a 4-D
        output (segmentation) the output's own projection, its last conv, and what follows it.
        Their compute is negligible (one vector, or a 1x1 conv to the classes at 1/8 size), but
        in int8 they quantise the logits themselves, per tensor: a step of (range / 255) against
        class margins of a few hundredths, plus an int8 LayerNorm (MEAN, SQUARED_DIFFERENCE,
        RSQRT in int8) in the classification head.
        """
        def producers(index: int) -> list[int]:
            op = self.ops[index]
            if op["type"] == "MEAN" and len(self.tensors[op["inputs"][0]].shape) == 4:
                return []  # the global pool: the feature map ends here
            if op["type"] in COMPUTE_OPS and any(len(self.tensors[t].shape) == 4 for t in op["outputs"]):
                return []  # a segmentation head's projection to the classes
            return [self.producer[t] for t in op["inputs"] if t in self.producer]

        return sorted(self._reach([self.producer[t] for t in self.outputs if t in self.producer], producers))

    def upsampling_convs(self) -> list[int]:
        """The depthwise convs with a channel multiplier: the exact bicubic rewrite's polyphase
        upsampling (each channel to factor**2 phases, then a pixel shuffle).

        XNNPACK runs them in float as one depthwise conv, but in int8 as a grouped IGEMM of one
        input channel a group: on seg-B1 at 512x1024 the head's two took 6 ms of a 67 ms int8
        run (1.27x fp32), and kept float 1.40x (one interleaved run, 2 threads).
        """
        return [op["index"] for op in self.ops if op["type"] == "DEPTHWISE_CONV_2D"
                and self.tensors[op["inputs"][1]].shape[-1] != self.tensors[op["inputs"][0]].shape[-1]]

    @staticmethod
    def _reach(seeds: list[int], step: Callable[[int], list[int]]) -> set[int]:
        """Every op reachable from ``seeds`` by repeatedly taking ``step`` (the seeds included)."""
        reached: set[int] = set()
        stack = list(seeds)
        while stack:
            index = stack.pop()
            if index not in reached:
                reached.add(index)
                stack.extend(n for n in step(index) if n not in reached)
        return reached

    def block_name(self, indices: list[int]) -> str:
        """A readable module path for a group of ops, from the converter's tensor names."""
        scopes = [self.ops[i]["scope"] for i in indices if self.ops[i]["scope"]]
        if not scopes:
            return f"ops {indices[0]}-{indices[-1]}"
        prefix = os.path.commonprefix([s.split(";")[0] for s in scopes])
        parts = [p for p in prefix.rstrip("/").split("/") if p]
        readable = [p.rsplit(".", 1)[-1] for p in parts]  # drop the python module prefixes
        return "/".join(readable[1:] if len(readable) > 1 else readable) or prefix


def mark_ops(graph: Graph, indices: set[int], suffix: str) -> bytes:
    """The graph's flatbuffer with ``suffix`` appended to the output tensor names of ``indices``."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = graph.model
    subgraph = model.subgraphs[0]
    renamed = set()
    for index in indices:
        for tensor in subgraph.operators[index].outputs:
            if tensor >= 0 and tensor not in renamed:
                renamed.add(tensor)
                subgraph.tensors[tensor].name = graph.tensor_name(tensor) + suffix
    try:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    finally:  # leave the Graph as it was
        for tensor in renamed:
            subgraph.tensors[tensor].name = graph.tensor_name(tensor)[: -len(suffix)]


def weight_elements(graph: Graph, op: dict[str, Any]) -> int:
    """How many weights a conv/FC op holds (0 for other ops)."""
    if op["type"] not in COMPUTE_OPS or len(op["inputs"]) < 2:
        return 0
    return int(np.prod(graph.tensors[op["inputs"][1]].shape))


def op_macs(graph: Graph, op: dict[str, Any]) -> int:
    """Multiply-adds of one op for one input: each output element takes a weight row of a conv or FC
    (its filter over the input channels; a depthwise conv's, over its window), and one operation for
    any other op, whose time, like a QUANTIZE's or a DEQUANTIZE's, goes with its output's size."""
    if not op["outputs"]:
        return 0
    shape = graph.tensors[op["outputs"][0]].shape
    elements = int(np.prod(shape, dtype=np.int64))
    channels = int(shape[-1]) if len(shape) else 1
    return elements * max(1, weight_elements(graph, op) // max(1, channels))


def op_is_int8(graph: Graph, op: dict[str, Any]) -> bool:
    """An op computes in integers when its first output tensor is int8/int16/int32."""
    if not op["outputs"]:
        return False
    return graph.tensors[op["outputs"][0]].type in INTEGER_TYPES
