"""Small read-only views of an ONNX graph shared by the island finder and the fp16 rewrite.

Nothing here mutates the model it is given, except ``name_nodes`` (documented).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
FLOAT_TYPES = (FLOAT, FLOAT16)

# Inputs that carry *values* (not shapes, indices or pads) for the ops an island is built from.
DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (0,), "Slice": (0,), "Split": (0,), "Transpose": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Flatten": (0,), "Identity": (0,), "Cast": (0,), "Relu": (0,),
    "Pad": (0,), "Gather": (0,), "Expand": (0,), "MatMul": (0, 1), "Div": (0, 1),
    "Add": (0, 1), "ReduceSum": (0,),
}

# Float inputs that must never follow the compute dtype, whatever the schema allows:
# Resize's roi and scales (casting scales to fp16 makes an invalid model; roi must stay exact).
NEVER_CAST: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}

# Float inputs with a type parameter of their own that must still follow another input's type:
# ONNX lets Pow's exponent (T1) differ from its base (T), TensorRT's elementwise layers do not
# (a strongly typed fp16 Pow with an fp32 exponent would be a mixed-type layer).
FOLLOWS: dict[str, dict[int, int]] = {"Pow": {1: 0}}


def node_names(model: onnx.ModelProto) -> list[str]:
    """A unique, deterministic name for every node of the main graph, in graph order.

    Named nodes keep their names. Unnamed nodes (and later duplicates) get
    ``<op_type>_<index>``, so the island finder and the rewrite agree on names for graphs from
    tools that leave nodes unnamed. The rewrite writes these names into its output, where
    TensorRT's ONNX parser turns them into layer names.
    """
    nodes = model.graph.node
    taken = {n.name for n in nodes if n.name}
    seen: set[str] = set()
    names: list[str] = []
    for i, node in enumerate(nodes):
        name = node.name
        if not name or name in seen:
            base = f"{node.op_type}_{i}"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
        seen.add(name)
        names.append(name)
    return names


def name_nodes(model: onnx.ModelProto) -> None:
    """Write ``node_names(model)`` into the model (in place)."""
    for node, name in zip(model.graph.node, node_names(model)):
        node.name = name


def fold_constant_identities(model: onnx.ModelProto) -> int:
    """Remove ``Identity`` nodes whose input is an initializer (TorchScript exports route shared
    weights through them), rewiring readers to the initializer. In place; returns the count."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        src = alias.get(node.input[0], node.input[0]) if node.input else ""
        if node.op_type == "Identity" and src in inits and node.output[0] not in outputs:
            alias[node.output[0]] = src
        else:
            keep.append(node)
    if not alias:
        return 0
    for node in keep:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
    kept = [onnx.NodeProto() for _ in keep]
    for new, old in zip(kept, keep):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(kept)
    dropped = set(alias)
    kept_vi = [v for v in graph.value_info if v.name not in dropped]
    del graph.value_info[:]
    graph.value_info.extend(kept_vi)
    return len(alias)


def unique_name(base: str, used: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not in ``used`` (which it joins)."""
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return imp.version
    raise ValueError(f"model imports no opset for domain {domain!r}")


def schema(node: onnx.NodeProto, opset: int) -> onnx.defs.OpSchema | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


def formal(params: list, index: int):
    """The formal parameter for actual position ``index`` (variadic last formals repeat)."""
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    if last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return last
    return None


def param_allows(sch: onnx.defs.OpSchema, type_str: str, elem: str) -> bool:
    """Whether formal type ``type_str`` ('T' or 'tensor(float)') admits ``tensor(elem)``."""
    for c in sch.type_constraints:
        if c.type_param_str == type_str:
            return f"tensor({elem})" in c.allowed_type_strs
    return type_str == f"tensor({elem})"


def is_type_param(sch: onnx.defs.OpSchema, type_str: str) -> bool:
    return any(c.type_param_str == type_str for c in sch.type_constraints)


class GraphIndex:
    """Producers, consumers, constants and element types of a model's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise NotImplementedError(
                    f"node {node.name!r} ({node.op_type}) has a subgraph; control flow is not supported"
                )
        self.model = model
        self.nodes = list(graph.node)
        self.names = node_names(model)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.opset = opset_version(model)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = [v.name for v in graph.input if v.name not in self.initializers]
        self.graph_outputs = [v.name for v in graph.output]
        self.types = _elem_types(model)

    def name(self, node: onnx.NodeProto) -> str:
        return self.names[self.index[id(node)]]

    def position(self, node: onnx.NodeProto) -> int:
        return self.index[id(node)]

    def consumers_of(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self.graph_outputs

    def is_constant(self, tensor: str) -> bool:
        if tensor in self.initializers:
            return True
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "Constant"

    def constant_value(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` output, else None."""
        if tensor in self.initializers:
            init = self.initializers[tensor]
            if init.data_location == TensorProto.EXTERNAL:
                raise ValueError(
                    f"initializer {tensor!r} lives in external data that was not loaded; "
                    "load the model with onnx.load(path) (load_external_data=True)"
                )
            return numpy_helper.to_array(init)
        node = self.producer.get(tensor)
        if node is None or node.op_type != "Constant":
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name == "value_float":
                return np.asarray(attr.f, dtype=np.float32)
            if attr.name == "value_floats":
                return np.asarray(list(attr.floats), dtype=np.float32)
            if attr.name == "value_int":
                return np.asarray(attr.i, dtype=np.int64)
            if attr.name == "value_ints":
                return np.asarray(list(attr.ints), dtype=np.int64)
        return None

    def constant_through_casts(self, tensor: str) -> tuple[np.ndarray | None, list[onnx.NodeProto]]:
        """The constant behind ``tensor`` when it is one, possibly re-typed by a chain of
        ``Identity``/``Cast``/``CastLike`` (unoptimised exports write scalars as
        ``CastLike(const, x)``); returns (value, the chain's nodes)."""
        chain: list[onnx.NodeProto] = []
        for _ in range(8):
            if self.is_constant(tensor):
                return self.constant_value(tensor), chain
            node = self.producer.get(tensor)
            if node is None or node.op_type not in ("Identity", "Cast", "CastLike"):
                break
            chain.append(node)
            tensor = node.input[0]
        return None, chain

    def elem_type(self, tensor: str) -> int | None:
        return self.types.get(tensor)

    def data_derived(self) -> set[str]:
        """Tensors whose *values* depend on a graph input (Shape/Size break the dependence)."""
        derived = set(self.graph_inputs)
        for node in self.nodes:
            if node.op_type in ("Shape", "Size"):
                continue
            if any(i in derived for i in node.input if i):
                derived.update(o for o in node.output if o)
        return derived


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor: declared value_info first, shape inference for the rest."""
    types: dict[str, int] = {}

    def take(values: Iterable[onnx.ValueInfoProto]) -> None:
        for v in values:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types.setdefault(v.name, v.type.tensor_type.elem_type)

    graph = model.graph
    take(graph.input)
    take(graph.output)
    take(graph.value_info)
    for init in graph.initializer:
        types.setdefault(init.name, init.data_type)
    missing = [o for n in graph.node for o in n.output if o and o not in types]
    if missing:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
        take(inferred.graph.value_info)
        take(inferred.graph.output)
    missing = [o for n in graph.node for o in n.output if o and o not in types]
    if missing:
        raise ValueError(f"cannot infer the element type of {len(missing)} tensors, e.g. {missing[:3]}")
    return types


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose big initializers are replaced by graph inputs: shape inference needs
    only types and shapes, and this keeps it cheap and under protobuf's 2 GB limit."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    del light.graph.initializer[:]
    existing = {v.name for v in light.graph.input}
    for init in model.graph.initializer:
        small_int = init.data_type in (TensorProto.INT64, TensorProto.INT32) and np.prod(init.dims) <= 64
        if small_int and init.data_location != TensorProto.EXTERNAL:
            light.graph.initializer.append(init)  # small int tensors can drive shape inference
        elif init.name not in existing:
            light.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


TINY = 1e-3  # an eps larger than this is no eps


def tiny_constant(ix: GraphIndex, tensor: str) -> float | None:
    """The value of a constant no larger than ``TINY`` anywhere (an eps), else None."""
    value, _ = ix.constant_through_casts(tensor)
    if value is None or value.dtype.kind != "f" or value.size == 0:
        return None
    if not np.all(np.abs(value) <= TINY):
        return None
    return float(value.reshape(-1)[0])


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def add_constant_feeders(ix: GraphIndex, members: dict[int, onnx.NodeProto]) -> None:
    """Re-typing chains of constants read only by the island (``CastLike(eps, x)``, the pad
    value) join it, so they keep fp32 too."""
    for node in list(members.values()):
        for tensor in node.input:
            value, chain = ix.constant_through_casts(tensor) if tensor else (None, [])
            if value is None:
                continue
            for link in chain:  # from the reader back to the constant
                if id(link) in members or not all(only_consumed_by(ix, o, members) for o in link.output):
                    break
                members[id(link)] = link


def only_consumed_by(ix: GraphIndex, tensor: str, members: dict[int, onnx.NodeProto]) -> bool:
    if ix.is_graph_output(tensor):
        return False
    return all(id(c) in members for c in ix.consumers_of(tensor))
