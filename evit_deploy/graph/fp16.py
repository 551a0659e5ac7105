"""Rewrite an fp32 ONNX graph into a real fp16 graph with fp32 islands.

Our own rewrite, because the off-the-shelf ones fail on EfficientViT (DESIGN.md, "Known
traps"): onnxruntime's float16 converter routes edges *between* blocked nodes through fp16
casts, and onnxconverter-common casts Resize's scales to fp16.

How it decides types, node by node in graph (topological) order:

* A node *computes on activations* when one of its float inputs (or outputs) depends on the
  values of a graph input; ``Shape``/``Size`` break that dependence, so shape arithmetic
  (``Shape -> Gather -> Concat`` of int64, and any float math on shapes) is never touched.
* Island nodes keep every input and output in its original type. Any fp16 activation that
  reaches them passes through an explicit ``Cast`` to fp32, and fp32 results leaving them
  pass through a ``Cast`` to fp16; one Cast per tensor and direction, shared by all readers.
* Every other activation node runs in fp16: from its ONNX schema, the float inputs whose type
  parameter also types an output (or another input) become fp16; its float outputs of that
  parameter become fp16. Inputs whose type is fixed (``tensor(float)``) or never cast
  (Resize's ``roi``/``scales``) keep theirs. Operators with no fp16 form keep fp32 (the island
  finder reports them as ``no-fp16`` islands).
* Constants (initializers and ``Constant`` nodes) take the type their readers need: fp16
  in place when all readers are fp16 (weights keep their names), fp32 untouched for island
  readers (LiteMLA's eps stays exactly 1e-15 in fp32), both when both are needed (an fp16
  copy named ``<name>__fp16``). fp16 copies clip to +-65504.
* Graph inputs and outputs keep fp32 behind a Cast unless ``io_fp16=True``. Output names are
  kept: the node that produced an output now writes ``<name>__fp16`` and a Cast writes the
  output.

Node names are kept (unnamed nodes get ``node_names``' deterministic names), so a TensorRT
``--layerPrecisions=<node>:fp32`` list built from the islands names layers of this graph.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._graph import (
    FLOAT,
    FLOAT16,
    FLOAT_TYPES,
    FOLLOWS,
    NEVER_CAST,
    GraphIndex,
    fold_constant_identities,
    formal,
    is_type_param,
    name_nodes,
    param_allows,
    schema,
    unique_name,
)
from .islands import Island, find_fp32_islands

__all__ = ["compute_dtypes", "to_full_fp16", "to_mixed_fp16"]

log = logging.getLogger(__name__)
_FP16_MAX = float(np.finfo(np.float16).max)
_SUFFIX = {FLOAT: "fp32", FLOAT16: "fp16"}


def to_mixed_fp16(
    model: onnx.ModelProto, islands: list[Island] | None = None, *, io_fp16: bool = False
) -> onnx.ModelProto:
    """fp16 weights and activations everywhere except ``islands`` (default: all that
    ``find_fp32_islands`` finds), with explicit Casts on every edge in and out of an island.

    Returns a new model; ``model`` is not modified. Graph IO stays fp32 unless ``io_fp16``.
    """
    if islands is None:
        islands = find_fp32_islands(model)
    return _rewrite(model, {name for island in islands for name in island.nodes}, io_fp16)


def to_full_fp16(model: onnx.ModelProto, *, io_fp16: bool = False) -> onnx.ModelProto:
    """The naive conversion: every float computation in fp16, no islands (LiteMLA's eps
    becomes 0, its token sums overflow). Kept to show why the islands exist. Resize's
    scales/roi still stay as they are (casting them gives an invalid model, not an fp16 one)."""
    return _rewrite(model, set(), io_fp16)


def compute_dtypes(model: onnx.ModelProto) -> dict[str, str | None]:
    """Node name -> the float type it computes in: "fp16" | "fp32" | "mixed" | "cast" (Cast,
    CastLike) | None (no computation on activations: constants, shape math, int outputs).

    Read from the element types of each node's float outputs and value inputs after strict
    shape inference; Resize's roi/scales are not value inputs."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    ix = GraphIndex(inferred)
    derived = ix.data_derived()
    result: dict[str, str | None] = {}
    for node in ix.nodes:
        name = ix.name(node)
        if node.op_type in ("Cast", "CastLike"):
            result[name] = "cast"
            continue
        if not any(t in derived for t in node.output if t):
            result[name] = None
            continue
        outs = [ix.elem_type(o) for o in node.output if o]
        if not any(t in FLOAT_TYPES for t in outs):
            result[name] = None
            continue
        skip = NEVER_CAST.get(node.op_type, frozenset())
        ins = [ix.elem_type(t) for i, t in enumerate(node.input) if t and i not in skip]
        kinds = {_SUFFIX[t] for t in outs + ins if t in FLOAT_TYPES}
        result[name] = kinds.pop() if len(kinds) == 1 else "mixed"
    return result


# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    want: list[int | None]  # per input: the type the node needs there (None: takes any)
    out: list[int | None]  # per output: its type in the new graph
    cast_to: int | None = None  # new ``to`` for a Cast node


def _rewrite(model: onnx.ModelProto, keep_fp32: set[str], io_fp16: bool) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name_nodes(out)
    fold_constant_identities(out)
    ix = GraphIndex(out)
    unknown = keep_fp32 - set(ix.names)
    if unknown:
        raise ValueError(f"island nodes not in the graph: {sorted(unknown)[:5]}")
    derived = ix.data_derived()

    cur: dict[str, int] = {}  # element type of each (non-constant) tensor in the new graph
    for name in ix.graph_inputs:
        t = ix.elem_type(name)
        cur[name] = FLOAT16 if (io_fp16 and t == FLOAT) else t

    plans: list[_Plan | None] = []
    for node in ix.nodes:
        if node.op_type == "Constant":
            plans.append(None)
            continue
        fp32 = ix.name(node) in keep_fp32
        plan = None if fp32 else _fp16_plan(ix, node, derived)
        if plan is None:  # island, shape math, or an op without fp16: original types
            plan = _Plan(
                want=[ix.elem_type(t) if t and ix.elem_type(t) in FLOAT_TYPES else None for t in node.input],
                out=[ix.elem_type(o) if o else None for o in node.output],
            )
        for o, t in zip(node.output, plan.out):
            if o:
                cur[o] = t
        plans.append(plan)

    consts = _place_constants(ix, plans, out, cur)
    new_nodes, new_types = _emit(ix, plans, consts, cur)
    _fix_outputs(ix, new_nodes, new_types, cur, io_fp16)
    _fix_value_info(out, ix, new_nodes, new_types, cur, io_fp16)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    return out


def _fp16_plan(ix: GraphIndex, node: onnx.NodeProto, derived: set[str]) -> _Plan | None:
    """Types for a node outside the islands, or None to keep its original types."""
    touches = any(t in derived and ix.elem_type(t) in FLOAT_TYPES for t in node.input if t) or any(
        o in derived and ix.elem_type(o) == FLOAT for o in node.output if o
    )
    if not touches:
        return None
    sch = schema(node, ix.opset)
    if sch is None:
        return None
    skip = NEVER_CAST.get(node.op_type, frozenset())

    params: dict[int, str] = {}  # float input index -> its type parameter
    for i, t in enumerate(node.input):
        f = formal(sch.inputs, i)
        if t and f is not None and ix.elem_type(t) == FLOAT and i not in skip and is_type_param(sch, f.type_str):
            params[i] = f.type_str
    convertible = {p for p in params.values() if param_allows(sch, p, "float16")}
    out_params = {f.type_str for j in range(len(node.output)) if (f := formal(sch.outputs, j)) is not None}
    uses = Counter(params.values())
    tied = {p for p in convertible if p in out_params or uses[p] >= 2}

    want: list[int | None] = []
    for i, t in enumerate(node.input):
        if not t or ix.elem_type(t) not in FLOAT_TYPES:
            want.append(None)
        elif i in params and params[i] in tied:
            want.append(FLOAT16)
        elif i in params and params[i] in convertible:
            want.append(None)  # e.g. Shape's input: any float type will do
        else:
            want.append(ix.elem_type(t))  # fixed-type, never-cast, or no fp16 form: as it was
    for i, leader in FOLLOWS.get(node.op_type, {}).items():  # e.g. Pow's exponent takes its base's type
        if i in params and params[i] in convertible and leader < len(want) and want[leader] == FLOAT16:
            want[i] = FLOAT16

    outs: list[int | None] = []
    cast_to = None
    for j, o in enumerate(node.output):
        t = ix.elem_type(o) if o else None
        f = formal(sch.outputs, j)
        if node.op_type == "Cast" and t == FLOAT and o in derived:
            t = cast_to = FLOAT16
        elif t == FLOAT and f is not None and f.type_str in tied:
            t = FLOAT16
        outs.append(t)
    return _Plan(want=want, out=outs, cast_to=cast_to)


def _place_constants(
    ix: GraphIndex, plans: list[_Plan | None], model: onnx.ModelProto, cur: dict[str, int]
) -> dict[str, str]:
    """Give float constants the types their readers want (recording in-place changes in
    ``cur``). Returns {original name: fp16 copy} for constants needed in both types (their
    fp16 readers are rewired in _emit)."""
    wants: dict[str, set[int]] = {}
    for node, plan in zip(ix.nodes, plans):
        if plan is None:
            continue
        for t, w in zip(node.input, plan.want):
            if t and ix.is_constant(t) and ix.elem_type(t) == FLOAT:
                wants.setdefault(t, set()).add(w if w is not None else FLOAT)

    copies: dict[str, str] = {}
    used_names = _all_names(ix)
    inits = {t.name: t for t in model.graph.initializer}
    for name, types in wants.items():
        if FLOAT16 not in types:
            continue
        value = _to_fp16(name, ix.constant_value(name))
        if types == {FLOAT16} and not ix.is_graph_output(name):
            if name in inits:
                inits[name].CopyFrom(numpy_helper.from_array(value, name))
            else:
                node = ix.producer[name]
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
            cur[name] = FLOAT16
        else:
            copy = unique_name(f"{name}__fp16", used_names)
            model.graph.initializer.append(numpy_helper.from_array(value, copy))
            copies[name] = copy
    return copies


def _to_fp16(name: str, value: np.ndarray | None) -> np.ndarray:
    if value is None:
        raise ValueError(f"constant {name!r} has no readable value")
    big = int(np.count_nonzero(np.abs(value[np.isfinite(value)]) > _FP16_MAX))
    if big:
        log.warning("%s: %d values beyond fp16's range clipped to +-%g", name, big, _FP16_MAX)
    finite = np.where(np.isfinite(value), np.clip(value, -_FP16_MAX, _FP16_MAX), value)
    return finite.astype(np.float16)


def _emit(ix, plans, consts, cur):
    """The new node list: originals rewired, with Casts inserted before first use."""
    used = _all_names(ix)
    casts: dict[tuple[str, int], str] = {}
    new_types: dict[str, tuple[str, int]] = {}  # cast output -> (source tensor, type)
    nodes: list[onnx.NodeProto] = []

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            name = unique_name(f"{tensor}__{_SUFFIX[to]}", used)
            node_name = unique_name(f"Cast_{tensor}_to_{_SUFFIX[to]}", used)
            nodes.append(helper.make_node("Cast", [tensor], [name], name=node_name, to=to))
            casts[key] = name
            new_types[name] = (tensor, to)
        return casts[key]

    for node, plan in zip(ix.nodes, plans):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if plan is not None:
            for i, (t, w) in enumerate(zip(node.input, plan.want)):
                if not t or w is None:
                    continue
                if ix.is_constant(t):
                    if w == FLOAT16 and t in consts:
                        new.input[i] = consts[t]
                    continue
                have = cur.get(t)
                if have is None:
                    raise ValueError(f"tensor {t!r} is read by {node.name!r} before it is produced")
                if have != w and have in FLOAT_TYPES:
                    new.input[i] = cast(t, w)
            if plan.cast_to is not None:
                for a in new.attribute:
                    if a.name == "to":
                        a.i = plan.cast_to
        nodes.append(new)
    return nodes, new_types


def _fix_outputs(ix, nodes, new_types, cur, io_fp16) -> None:
    """Graph outputs keep their names and (unless io_fp16) fp32: Cast at the exit."""
    used = _all_names(ix) | {n.name for n in nodes} | {o for n in nodes for o in n.output}
    for name in ix.graph_outputs:
        t = cur.get(name)
        if t not in FLOAT_TYPES:
            continue
        target = FLOAT16 if io_fp16 else FLOAT
        if t == target:
            continue
        if name not in ix.producer or ix.producer[name].op_type == "Constant":
            raise NotImplementedError(f"graph output {name!r} is not computed by a node")
        inner = unique_name(f"{name}__{_SUFFIX[t]}", used)
        for node in nodes:
            for k, o in enumerate(node.output):
                if o == name:
                    node.output[k] = inner
            for k, i in enumerate(node.input):
                if i == name:
                    node.input[k] = inner
        nodes.append(helper.make_node("Cast", [inner], [name], name=unique_name(f"Cast_{name}_to_{_SUFFIX[target]}", used),
                                      to=target))
        cur[inner] = t
        cur[name] = target
        new_types[inner] = (name, t)


def _fix_value_info(model, ix, nodes, new_types, cur, io_fp16) -> None:
    graph = model.graph
    shapes = {v.name: v for v in [*graph.input, *graph.output, *graph.value_info]}
    for v in graph.value_info:
        t = cur.get(v.name)
        if t is not None and v.type.HasField("tensor_type"):
            v.type.tensor_type.elem_type = t
    for v in graph.input:
        if io_fp16 and v.name in cur and v.type.tensor_type.elem_type == FLOAT:
            v.type.tensor_type.elem_type = FLOAT16
    for v in graph.output:
        if v.name in cur and v.type.HasField("tensor_type"):
            v.type.tensor_type.elem_type = cur[v.name]
    for name, (source, t) in new_types.items():
        vi = onnx.ValueInfoProto()
        if source in shapes:
            vi.CopyFrom(shapes[source])
            if hasattr(vi, "metadata_props"):
                vi.ClearField("metadata_props")
            vi.name = name
            vi.type.tensor_type.elem_type = t
        else:
            vi = helper.make_tensor_value_info(name, t, None)
        graph.value_info.append(vi)


def _all_names(ix: GraphIndex) -> set[str]:
    names = set(ix.names) | set(ix.initializers) | set(ix.graph_inputs) | set(ix.graph_outputs)
    for node in ix.nodes:
        names.update(node.input)
        names.update(node.output)
    return names

