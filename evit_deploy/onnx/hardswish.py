"""HardSwish as ops ONNX Runtime runs in int8, for its int8 scheme.

ONNX Runtime's CPU provider has no int8 HardSwish. In an int8 graph it runs each one in float
(inlined as HardSigmoid + Mul) between a DequantizeLinear and a QuantizeLinear, and lays
Transposes around them, since its int8 convolutions run channels-last. On seg-B1 at 512x1024
those float islands made the int8 graph 0.52x as fast as fp32 (``benchmarks/onnx_int8_schemes.py``).

Written as ``HardSwish(x) = x * Clip(x + 3, 0, 6) / 6``, every op has an int8 kernel once
quantised: QLinearAdd, the Clip folded into its quantisation range, QLinearMul. The ``/ 6`` is
folded into the weights of the convolutions that read the result when only convolutions read it
(a convolution is linear in its input, so this is exact in float, and per-channel weight
quantisation scales with it); otherwise it stays a Mul by a constant. The tensor such a
HardSwish returns then holds six times the module's output, which the layer map records
(``Decomposed.scaled``) so that ``evit debug`` compares like with like.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

THREE, ZERO, SIX, SIXTH = "evit_hardswish_three", "evit_hardswish_zero", "evit_hardswish_six", "evit_hardswish_sixth"
OP_TYPES = ("Add", "Clip", "Mul")  # what the rewritten HardSwish needs quantised


@dataclass
class Decomposed:
    """The rewritten graph and what the rewrite did."""

    model: onnx.ModelProto
    counts: dict[str, int]
    #: the new nodes by the node that computes the HardSwish's input (its conv), which an accuracy
    #: control keeps float with them: an int8 HardSwish between a float conv and its readers would
    #: add a rounding and two layout changes where it saves none
    companions: dict[str, list[str]]
    #: tensors that now hold their old value times a factor (a HardSwish whose 1/6 went into its readers)
    scaled: dict[str, float]


def decompose_hardswish(model: onnx.ModelProto, keep: Iterable[str] = ()) -> Decomposed:
    """``model`` with every HardSwish not named in ``keep`` rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = set(keep)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = {init.name: init for init in graph.initializer}
    producer = {o: node.name for node in graph.node for o in node.output}
    companions: dict[str, list[str]] = {}
    outputs = {o.name for o in graph.output}
    nodes, counts = [], {"rewritten": 0, "sixth_in_convs": 0}
    scaled: dict[str, float] = {}
    for node in graph.node:
        if node.op_type != "HardSwish" or node.name in kept:
            nodes.append(node)
            continue
        x, y, name = node.input[0], node.output[0], node.name
        convs = readers.get(y, [])
        fold = y not in outputs and bool(convs) and all(
            r.op_type == "Conv" and r.input[1] in weights and len(readers.get(r.input[1], [])) == 1 for r in convs)
        times = y if fold else f"{name}_times"
        made = [helper.make_node("Add", [x, THREE], [f"{name}_plus3"], name=f"{name}_add"),
                helper.make_node("Clip", [f"{name}_plus3", ZERO, SIX], [f"{name}_relu6"], name=f"{name}_clip"),
                helper.make_node("Mul", [x, f"{name}_relu6"], [times], name=f"{name}_mul")]
        if fold:
            for conv in convs:
                weight = weights[conv.input[1]]
                weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) / np.float32(6), weight.name))
            counts["sixth_in_convs"] += 1
            scaled[y] = 6.0
        else:
            made.append(helper.make_node("Mul", [times, SIXTH], [y], name=f"{name}_sixth"))
        for new in made:  # the exporter's module path, so layer maps and accuracy control name them
            new.metadata_props.extend(node.metadata_props)
        nodes += made
        companions.setdefault(producer.get(x, made[0].name), []).extend(n.name for n in made)
        counts["rewritten"] += 1
    if counts["rewritten"]:
        constants = {THREE: 3.0, ZERO: 0.0, SIX: 6.0, SIXTH: 1 / 6}
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k) for k, v in constants.items())
    del graph.node[:]
    graph.node.extend(nodes)
    return Decomposed(out, counts, companions, scaled)
