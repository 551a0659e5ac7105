"""LayerNorms in an exported graph, fused or written out: the ``layernorm`` fp32 islands' anchors.

``nn.LayerNorm`` exports as ``LayerNormalization``; SAM's ``LayerNorm2d`` over the channel axis
as ``ReduceMean`` -> ``Sub`` -> ``Pow`` (or ``Mul`` by itself) -> ``ReduceMean`` -> ``Add`` eps ->
``Sqrt`` -> ``Div`` (or ``Mul`` by a ``Reciprocal``), then the affine ``Mul``/``Add`` by constants.
The anchor is the normalising division: its numerator is ``x - mean(x)`` and its denominator the
root of the mean of that same tensor squared, plus a tiny constant (see ``islands`` for why they
stay fp32).
"""
from __future__ import annotations

import onnx

from ._graph import GraphIndex, add_constant_feeders, attr, tiny_constant


def find_layernorm(ix: GraphIndex, node: onnx.NodeProto):
    """(member nodes, eps, form) if ``node`` is a ``LayerNormalization`` or the normalising
    division of a written-out LayerNorm (module doc), else None."""
    if node.op_type == "LayerNormalization":
        eps = float(attr(node, "epsilon", 1e-5))
        axis = int(attr(node, "axis", -1))
        return [node], eps, f"LayerNormalization over axis {axis} (fused)"
    reciprocal: list[onnx.NodeProto] = []
    if node.op_type == "Div":
        centred, root = node.input[0], node.input[1]
    elif node.op_type == "Mul":  # x * Reciprocal(sqrt(...)), as simplifiers sometimes write it
        reciprocal = [p for t in node.input if (p := ix.producer.get(t)) is not None and p.op_type == "Reciprocal"]
        if len(reciprocal) != 1:
            return None
        centred = next(t for t in node.input if t != reciprocal[0].output[0])
        root = reciprocal[0].input[0]
    else:
        return None
    sub = ix.producer.get(centred)
    mean = ix.producer.get(sub.input[1]) if sub is not None and sub.op_type == "Sub" else None
    if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
        return None
    sqrt = ix.producer.get(root)
    add = ix.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
    if add is None or add.op_type != "Add":
        return None
    eps, variance = tiny_constant(ix, add.input[1]), add.input[0]
    if eps is None:
        eps, variance = tiny_constant(ix, add.input[0]), add.input[1]
    var = ix.producer.get(variance)
    square = ix.producer.get(var.input[0]) if var is not None and var.op_type == "ReduceMean" else None
    if square is None or not _squares(ix, square, centred) or eps is None:
        return None
    axes = _axes(ix, mean)
    if axes is None or axes != _axes(ix, var):
        return None  # both means over the same, known axes
    members = [mean, sub, square, var, add, sqrt, *reciprocal, node, *_affine(ix, node)]
    found = {id(n): n for n in members}
    add_constant_feeders(ix, found)
    return list(found.values()), eps, f"LayerNorm over axes {list(axes)} written out (ReduceMean/Sub/Pow/Sqrt/Div)"


def _axes(ix: GraphIndex, reduce: onnx.NodeProto) -> tuple[int, ...] | None:
    """A ``ReduceMean``'s axes: its constant second input (opset 18+) or attribute (before)."""
    if len(reduce.input) > 1 and reduce.input[1]:
        value = ix.constant_value(reduce.input[1])
        return None if value is None else tuple(int(a) for a in value.reshape(-1))
    attribute = attr(reduce, "axes", None)
    return None if attribute is None else tuple(int(a) for a in attribute)


def _squares(ix: GraphIndex, node: onnx.NodeProto, tensor: str) -> bool:
    """``node`` computes ``tensor ** 2`` (``Pow`` by the constant 2, or ``Mul`` of it by itself)."""
    if node.op_type == "Mul":
        return list(node.input) == [tensor, tensor]
    if node.op_type != "Pow" or node.input[0] != tensor:
        return False
    exponent, _ = ix.constant_through_casts(node.input[1])
    return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


def _affine(ix: GraphIndex, norm: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The ``* weight + bias`` by constants right after the normalisation (when it is its only reader)."""
    chain: list[onnx.NodeProto] = []
    tensor = norm.output[0]
    for op in ("Mul", "Add"):
        readers = ix.consumers_of(tensor)
        if len(readers) != 1 or ix.is_graph_output(tensor) or readers[0].op_type != op:
            break
        other = [t for t in readers[0].input if t != tensor]
        if len(other) != 1 or not _constant(ix, other[0]):
            break
        chain.append(readers[0])
        tensor = readers[0].output[0]
    return chain


def _constant(ix: GraphIndex, tensor: str) -> bool:
    """``tensor`` is a constant, possibly re-typed (``Cast``/``CastLike``/``Identity``); no value read."""
    for _ in range(8):
        if ix.is_constant(tensor):
            return True
        node = ix.producer.get(tensor)
        if node is None or node.op_type not in ("Identity", "Cast", "CastLike"):
            return False
        tensor = node.input[0]
    return False
