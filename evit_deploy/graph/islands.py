"""Find the parts of an exported EfficientViT graph that must compute in fp32.

Islands are found from the graph's *structure*, never from node names, so they survive
exporter versions, dynamic shapes and simplifiers (onnxslim, onnxsim):

* **attention** (LiteMLA, architecture.md 5.4-5.7). The anchor is the normalising division:
  a ``Div`` whose numerator and denominator both come from the *same* ``MatMul`` output, the
  denominator through a selection/reduction (``Slice``/``Split``/``Gather`` of the row of ones'
  product on the linear path, ``ReduceSum`` on the quadratic path) and an ``Add`` of a tiny
  constant (the eps). From there the island grows over the other matmul (the ``V1 @ K^T``
  before it on the linear path, the ``V @ A`` after it on the quadratic path) and backwards
  through the value-preserving ops feeding the matmuls (``Relu``, ``Pad`` of ones,
  ``Transpose``, ``Slice``, ``Reshape``, ``Cast`` ...), up to the qkv split. A producer joins
  only if every consumer of its output is already in the island, so an island never swallows
  a tensor that is also used elsewhere.
* **resize**: every ``Resize`` (the seg head's bicubic upsampling runs in fp32 in the official
  code, architecture.md 2.4 / 10.3), and the same upsampling in its exact conv form
  (``evit_deploy.convert.bicubic``): a ``DepthToSpace`` fed by a depthwise-multiplier ``Conv``
  whose constant filters each sum to 1 (an interpolating filter bank), fed by edge padding
  (``Pad`` mode=edge, or the ``Slice``/``Concat`` edge copies the module exports); the
  padding joins the island when nothing else reads it.
* **no-fp16**: any node computing on activations whose operator has no fp16 form (or an
  unknown operator); none occur in the EfficientViT graphs, but the rewrite must not silently
  produce an invalid model when one does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ._graph import DATA_INPUTS, FLOAT, NEVER_CAST, GraphIndex, formal, param_allows, schema

__all__ = ["Island", "find_fp32_islands", "islands_summary"]

# Ops that only select, reshape or retype values: an attention path may pass through them.
_PASS = frozenset({"Slice", "Split", "Gather", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                   "Flatten", "Identity", "Cast"})
_SELECT = frozenset({"Slice", "Split", "Gather", "ReduceSum"})
# Ops the island may grow over, backwards from its matmuls (the qkv split, kernel, pad of ones).
_GROW = _PASS | {"Relu", "Pad", "MatMul"}
_TINY = 1e-3  # an eps larger than this is no eps
_EDGE_PAD = frozenset({"Slice", "Concat", "Pad"})  # how the exact upsampling's edge padding is written
_UPSAMPLE_FP32 = ("the official UpSampleLayer casts its input to fp32 and returns fp32 (autocast disabled); "
                  "kept fp32, entered and left by Casts")
_MAX_DEPTH = 32


@dataclass
class Island:
    """A set of nodes that keep computing in fp32 inside an otherwise fp16 graph."""

    kind: str  # "attention" | "resize" | "no-fp16"
    nodes: list[str]  # node names, in graph order
    reason: str  # why it stays fp32, for manifests and build plans
    eps: float | None = None  # attention: the normaliser's eps found in the graph (None: none)


def find_fp32_islands(model: onnx.ModelProto) -> list[Island]:
    """All fp32 islands of ``model`` (an fp32 ONNX graph), in graph order.

    Node names are the model's own; unnamed nodes are referred to by the deterministic names
    of ``evit_deploy.graph.node_names`` (which ``to_mixed_fp16`` writes into its output).
    """
    ix = GraphIndex(model)
    islands: list[tuple[int, Island]] = []
    claimed: set[int] = set()

    for node in ix.nodes:
        if node.op_type != "Div" or id(node) in claimed:
            continue
        found = _attention_island(ix, node)
        if found is None:
            continue
        members, eps, quadratic = found
        claimed.update(id(n) for n in members)
        islands.append(_make_attention(ix, node, members, eps, quadratic))

    for node in ix.nodes:
        if node.op_type == "Resize" and id(node) not in claimed:
            claimed.add(id(node))
            mode = _attr(node, "mode", b"nearest").decode()
            islands.append((ix.position(node), Island(
                kind="resize",
                nodes=[ix.name(node)],
                reason=f"{mode} Resize (upsampling): {_UPSAMPLE_FP32}",
            )))
        elif node.op_type == "DepthToSpace" and id(node) not in claimed:
            members = _exact_upsampling(ix, node)
            if members is not None:
                claimed.update(id(n) for n in members)
                ordered = sorted(members, key=ix.position)
                islands.append((ix.position(ordered[0]), Island(
                    kind="resize",
                    nodes=[ix.name(n) for n in ordered],
                    reason="exact bicubic upsampling (edge pad + interpolating depthwise conv + pixel shuffle; "
                           f"filter taps such as -0.0234 lose digits in fp16): {_UPSAMPLE_FP32}",
                )))

    derived = ix.data_derived()
    for node in ix.nodes:
        if id(node) in claimed or node.op_type == "Constant":
            continue
        why = _no_fp16_reason(ix, node, derived)
        if why:
            claimed.add(id(node))
            islands.append((ix.position(node), Island(kind="no-fp16", nodes=[ix.name(node)], reason=why)))

    islands.sort(key=lambda pair: pair[0])
    return [island for _, island in islands]


def islands_summary(islands: list[Island]) -> list[dict]:
    """Plain dicts (JSON-ready) describing what stays fp32 and why, for manifests and TRT plans."""
    out = []
    for island in islands:
        entry = asdict(island)
        entry["nodes"] = list(island.nodes)
        if island.kind != "attention":
            entry.pop("eps")
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------
# attention


def _attention_island(ix: GraphIndex, div: onnx.NodeProto):
    """(member nodes, eps, quadratic?) if ``div`` is a LiteMLA normalising division, else None."""
    num = _trace_to_matmul(ix, div.input[0], normaliser=False)
    den = _trace_to_matmul(ix, div.input[1], normaliser=True)
    if num is None or den is None:
        return None
    (mm_num, num_path, _, _), (mm_den, den_path, eps, selected) = num, den
    if mm_num is not mm_den or not selected:
        return None

    members = {id(n): n for n in [div, mm_num, *num_path, *den_path]}
    forward = _forward_matmul(ix, div)
    for n in forward:
        members[id(n)] = n
    _grow_backwards(ix, members)
    _add_constant_feeders(ix, members)
    quadratic = bool(forward)
    return list(members.values()), eps, quadratic


def _trace_to_matmul(ix: GraphIndex, tensor: str, normaliser: bool):
    """Walk back from ``tensor`` through selection/reshape ops (and, for the normaliser, one
    tiny-constant Add and a ReduceSum) to a MatMul. Returns (matmul, path, eps, selected)."""
    path: list[onnx.NodeProto] = []
    eps: float | None = None
    seen_add = selected = False
    for _ in range(_MAX_DEPTH):
        node = ix.producer.get(tensor)
        if node is None:
            return None
        op = node.op_type
        if op == "MatMul":
            return node, path, eps, selected
        if op in _PASS:
            selected |= op in _SELECT
            tensor = node.input[0]
        elif normaliser and op == "ReduceSum":
            selected = True
            tensor = node.input[0]
        elif normaliser and op == "Add" and not seen_add:
            seen_add = True
            a, b = node.input[0], node.input[1]
            tiny_b, tiny_a = _tiny_constant(ix, b), _tiny_constant(ix, a)
            if tiny_b is not None:
                eps, tensor = tiny_b, a
            elif tiny_a is not None:
                eps, tensor = tiny_a, b
            else:
                return None
        else:
            return None
        path.append(node)
    return None


def _tiny_constant(ix: GraphIndex, tensor: str) -> float | None:
    value, _ = ix.constant_through_casts(tensor)
    if value is None or value.dtype.kind != "f" or value.size == 0:
        return None
    if not np.all(np.abs(value) <= _TINY):
        return None
    return float(value.reshape(-1)[0])


def _forward_matmul(ix: GraphIndex, div: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Quadratic path: the ``V @ A`` MatMul fed by the division (through reshape-like ops)."""
    found: list[onnx.NodeProto] = []

    def visit(tensor: str, path: list[onnx.NodeProto], depth: int) -> None:
        for consumer in ix.consumers_of(tensor):
            if consumer.op_type == "MatMul":
                found.extend([*path, consumer])
            elif consumer.op_type in _PASS and depth < 4 and consumer.input[0] == tensor:
                for out in consumer.output:
                    visit(out, [*path, consumer], depth + 1)

    visit(div.output[0], [], 0)
    return list({id(n): n for n in found}.values())


def _grow_backwards(ix: GraphIndex, members: dict[int, onnx.NodeProto]) -> None:
    """Add producers reached through value inputs until nothing changes (see module doc)."""
    changed = True
    while changed:
        changed = False
        for node in list(members.values()):
            for i in DATA_INPUTS.get(node.op_type, ()):
                if i >= len(node.input) or not node.input[i]:
                    continue
                prod = ix.producer.get(node.input[i])
                if prod is None or id(prod) in members or prod.op_type not in _GROW:
                    continue
                if all(_only_consumed_by(ix, out, members) for out in prod.output if out):
                    members[id(prod)] = prod
                    changed = True


def _add_constant_feeders(ix: GraphIndex, members: dict[int, onnx.NodeProto]) -> None:
    """Re-typing chains of constants read only by the island (``CastLike(eps, x)``, the pad
    value) join it, so they keep fp32 too."""
    for node in list(members.values()):
        for tensor in node.input:
            value, chain = ix.constant_through_casts(tensor) if tensor else (None, [])
            if value is None:
                continue
            for link in chain:  # from the reader back to the constant
                if id(link) in members or not all(_only_consumed_by(ix, o, members) for o in link.output):
                    break
                members[id(link)] = link


def _only_consumed_by(ix: GraphIndex, tensor: str, members: dict[int, onnx.NodeProto]) -> bool:
    if ix.is_graph_output(tensor):
        return False
    return all(id(c) in members for c in ix.consumers_of(tensor))


def _make_attention(ix, div, members, eps, quadratic) -> tuple[int, Island]:
    ordered = sorted(members, key=ix.position)
    matmuls = [ix.name(n) for n in ordered if n.op_type == "MatMul"]
    path = "quadratic (N <= dim) path" if quadratic else "linear path"
    if eps is None:
        eps_note = ("NO eps constant found on the normaliser (deleted by an optimizer?): "
                    "0/0 = NaN where ReLU(q) meets no key mass, in fp32 too")
    else:
        eps_note = f"eps={eps:g} is {'0' if abs(eps) < 2.0**-25 else 'coarse'} in fp16"
    reason = (
        f"LiteMLA ReLU attention, {path}: the MatMuls ({', '.join(matmuls)}) sum over all tokens "
        f"and overflow fp16 (max 65504) on trained weights at segmentation resolutions; "
        f"the division {ix.name(div)} needs its eps ({eps_note}). Official code runs this in "
        f"fp32 (architecture.md 5.7)"
    )
    island = Island(kind="attention", nodes=[ix.name(n) for n in ordered], reason=reason, eps=eps)
    return ix.position(ordered[0]), island


# --------------------------------------------------------------------------------------------
# exact upsampling


def _exact_upsampling(ix: GraphIndex, d2s: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The nodes of an exact upsampling ending in ``d2s`` (see the module doc), else None."""
    conv = ix.producer.get(d2s.input[0])
    if conv is None or conv.op_type != "Conv" or len(conv.input) > 2:
        return None
    weight = ix.constant_value(conv.input[1])
    groups, factor = _attr(conv, "group", 1), _attr(d2s, "blocksize", 0)
    if weight is None or weight.ndim != 4 or weight.shape[1] != 1 or groups < 1 or factor < 2:
        return None
    if weight.shape[0] != groups * factor * factor:
        return None
    if not np.allclose(weight.astype(np.float64).sum(axis=(1, 2, 3)), 1.0, atol=1e-5):
        return None
    pad = ix.producer.get(conv.input[0])
    if pad is None or pad.op_type not in ("Concat", "Pad"):
        return None
    if pad.op_type == "Pad" and _attr(pad, "mode", b"constant") != b"edge":
        return None
    members = {id(n): n for n in (d2s, conv)}
    _grow_edge_padding(ix, pad, members)
    return list(members.values())


def _grow_edge_padding(ix: GraphIndex, pad: onnx.NodeProto, members: dict[int, onnx.NodeProto]) -> None:
    """``pad`` and the Slice/Concat/Pad nodes behind it whose outputs only the island reads
    (repeated until nothing changes: an edge slice and its source join in either order)."""
    frontier = {id(pad): pad}
    changed = True
    while changed:
        changed = False
        for node in list(frontier.values()):
            if id(node) in members or not all(_only_consumed_by(ix, o, members) for o in node.output if o):
                continue
            members[id(node)] = node
            changed = True
            data = range(len(node.input)) if node.op_type == "Concat" else (0,)
            for i in data:
                producer = ix.producer.get(node.input[i])
                if producer is not None and producer.op_type in _EDGE_PAD:
                    frontier.setdefault(id(producer), producer)


# --------------------------------------------------------------------------------------------
# operators without fp16


def _no_fp16_reason(ix: GraphIndex, node: onnx.NodeProto, derived: set[str]) -> str | None:
    float_acts = [i for i, t in enumerate(node.input) if t and t in derived and ix.elem_type(t) == FLOAT]
    if not float_acts:
        return None
    sch = schema(node, ix.opset)
    if sch is None:
        return f"{node.domain or 'ai.onnx'}::{node.op_type} has no known ONNX schema; left in fp32"
    for i in float_acts:
        if i in NEVER_CAST.get(node.op_type, ()):
            continue
        param = formal(sch.inputs, i)
        if param is not None and not param_allows(sch, param.type_str, "float16"):
            return f"{node.op_type} input {param.name!r} has no fp16 form in opset {ix.opset}; left in fp32"
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
