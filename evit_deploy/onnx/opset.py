"""Writing an exported graph for opset 17, the ceiling of TensorRT 8.5/8.6's ONNX parser.

torch's dynamo exporter writes opset 18 at the least, and onnx's version converter has no
18 -> 17 adapter for Pad (nor for the Reduce ops). Opset 18 changed the signatures of ops
EfficientViT's graphs use, not what they compute:

- Pad-18 adds an optional ``axes`` input;
- Resize-18 adds the ``antialias``, ``axes`` and ``keep_aspect_ratio_policy`` attributes;
- Split-18 adds ``num_outputs`` (opset 13 takes the sizes as its second input);
- ReduceMean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare-18 take ``axes`` as an input
  (opset 13: an attribute; ReduceSum already took an input at 13).

``to_opset_17`` writes those back in their opset-13 form, refuses a use opset 17 cannot express
(Resize with antialias, Pad over chosen axes, ...), and refuses any op that does not exist at 17
(Gelu of opset 20, GroupNormalization, ...). The caller checks the result with ``onnx.checker``
at 17 (``onnx.export.check_and_save``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from evit_deploy.errors import UsageError

if TYPE_CHECKING:
    import onnx

TARGET = 17
REDUCE_AXES_INPUT = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
RESIZE_18_DEFAULTS = {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"}


def opset_of(model: onnx.ModelProto) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def to_opset_17(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (opset 17 or 18, default domain only) written for opset 17, IR version 8."""
    import onnx

    source = opset_of(model)
    if source == TARGET:
        return model
    if source != 18 or model.functions or any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
        raise UsageError(f"evit writes opset 17 only from a plain opset-18 graph, not opset {source}"
                         + (" with local functions" if model.functions else ""))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewriter = _Rewriter(out)
    for node in list(out.graph.node):
        rewriter.rewrite(node)
    rewriter.drop_detached()
    for entry in out.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = TARGET
    out.ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", TARGET)])
    _refuse_newer_ops(out)
    return out


class _Rewriter:
    """Rewrites one node at a time; constants come from initializers and Constant nodes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import onnx

        self.model = model
        self.constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        self._shapes: dict[str, list[int | None]] | None = None
        self.detached: set[str] = set()  # inputs a rewrite removed (axes): dropped if nothing else reads them

    def rewrite(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Pad":
            self._pad(node)
        elif node.op_type == "Resize":
            self._resize(node)
        elif node.op_type == "Split":
            self._split(node)
        elif node.op_type in REDUCE_AXES_INPUT:
            self._reduce(node)
        elif node.op_type in ("ScatterElements", "ScatterND"):
            reduction = _attr(node, "reduction", b"none")
            if reduction in (b"max", b"min"):
                raise _refuse(node, f"reduction={reduction.decode()} arrived at opset 18")
        elif node.op_type == "LpPool" and _attr(node, "ceil_mode", 0):
            raise _refuse(node, "ceil_mode arrived at opset 18")

    def _pad(self, node: onnx.NodeProto) -> None:
        if len(node.input) > 3 and node.input[3]:
            raise _refuse(node, "padding chosen axes (its 'axes' input) arrived at opset 18")
        _trim_inputs(node, 3, self.detached)

    def _resize(self, node: onnx.NodeProto) -> None:
        for name, default in RESIZE_18_DEFAULTS.items():
            if _attr(node, name, default) != default:
                raise _refuse(node, f"{name}={_attr(node, name, default)!r} arrived at opset 18")
        if _attr(node, "axes", None) is not None:
            raise _refuse(node, "resizing chosen axes arrived at opset 18")
        _drop_attrs(node, set(RESIZE_18_DEFAULTS))

    def _split(self, node: onnx.NodeProto) -> None:
        parts = _attr(node, "num_outputs", None)
        if parts is None:
            return
        axis = _attr(node, "axis", 0)
        shape = self.shapes().get(node.input[0])
        length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if length is None:
            raise _refuse(node, "num_outputs over a dimension of unknown size has no opset-13 form")
        chunk = -(-length // parts)  # ceil, as Split-18 cuts: equal chunks, the last one smaller
        sizes = [min(chunk, length - i * chunk) for i in range(parts)]
        _drop_attrs(node, {"num_outputs"})
        _trim_inputs(node, 1, self.detached)
        node.input.append(self._add_constant(f"{node.name or node.output[0]}_split", np.array(sizes, np.int64)))

    def _reduce(self, node: onnx.NodeProto) -> None:
        import onnx

        noop = _attr(node, "noop_with_empty_axes", 0)
        axes = self.constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if len(node.input) > 1 and node.input[1] and axes is None:
            raise _refuse(node, "axes computed at run time have no opset-13 form (an attribute)")
        if noop and (axes is None or axes.size == 0):
            raise _refuse(node, "noop_with_empty_axes arrived at opset 18")
        _drop_attrs(node, {"noop_with_empty_axes"})
        _trim_inputs(node, 1, self.detached)
        if axes is not None and axes.size:
            node.attribute.append(onnx.helper.make_attribute("axes", [int(a) for a in axes.reshape(-1)]))

    def drop_detached(self) -> None:
        """Initializers and Constant nodes that only fed a removed input (the Reduce ops' axes)."""
        graph = self.model.graph
        read = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
        unused = self.detached - read
        kept = [i for i in graph.initializer if i.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in unused)]
        del graph.node[:]
        graph.node.extend(nodes)

    def shapes(self) -> dict[str, list[int | None]]:
        """Static dims of every value shape inference can tell (for Split's num_outputs)."""
        import onnx

        if self._shapes is None:
            inferred = onnx.shape_inference.infer_shapes(self.model)
            values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
            self._shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                     for d in v.type.tensor_type.shape.dim] for v in values}
        return self._shapes

    def _add_constant(self, name: str, value: np.ndarray) -> str:
        import onnx

        taken = {i.name for i in self.model.graph.initializer} | {o for n in self.model.graph.node for o in n.output}
        unique, index = name, 0
        while unique in taken:
            index += 1
            unique = f"{name}_{index}"
        self.model.graph.initializer.append(onnx.numpy_helper.from_array(value, unique))
        self.constants[unique] = value
        return unique


def _refuse_newer_ops(model: onnx.ModelProto) -> None:
    import onnx

    for node in model.graph.node:
        try:
            onnx.defs.get_schema(node.op_type, TARGET, "")
        except onnx.defs.SchemaError:
            raise UsageError(f"node {node.name or node.output[0]!r} is a {node.op_type}, which does not exist in ONNX "
                             f"opset {TARGET} (TensorRT 8.x's ceiling); this model cannot target TensorRT 8.x") from None


def _refuse(node: onnx.NodeProto, why: str) -> UsageError:
    return UsageError(f"node {node.name or node.output[0]!r} ({node.op_type}) cannot be written for opset {TARGET}, "
                      f"TensorRT 8.x's ceiling: {why}")


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _drop_attrs(node: onnx.NodeProto, names: set[str]) -> None:
    kept = [a for a in node.attribute if a.name not in names]
    del node.attribute[:]
    node.attribute.extend(kept)


def _trim_inputs(node: onnx.NodeProto, keep: int, detached: set[str] | None = None) -> None:
    """Drop inputs from index ``keep`` on (and empty optional inputs at the end)."""
    if detached is not None:
        detached.update(n for n in node.input[keep:] if n)
    inputs = list(node.input[:keep])
    while inputs and not inputs[-1]:
        inputs.pop()
    del node.input[:]
    node.input.extend(inputs)
