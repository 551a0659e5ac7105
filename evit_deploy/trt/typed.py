"""The typed ONNX a strongly typed TensorRT build takes as is, and the checks made on it here.

fp16 is the ONNX target's own mixed-precision pass (``evit_deploy.graph``): fp16 weights and
activations, the LiteMLA attention and the resizes kept in fp32 behind explicit ``Cast``
nodes. TensorRT 11 (and 10 with ``--stronglyTyped``) runs each layer in the types the ONNX
declares.

ONNX Runtime's CPU provider computes most "fp16" ops in fp32 and skips the rounding between
them (``emulate_fp16``), so the graph is checked, and verified, through an exact fp16
emulation: every fp16 tensor rounded to fp16 right where it is made. The overflow check runs
that emulation with every fp16 tensor watched: the attention's sums grow with the number of
tokens, so an island choice that is safe at the export resolution can overflow at
``--max-shape``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.errors import CheckFailed

if TYPE_CHECKING:
    import onnx

    from evit_deploy.graph import Island

FP16_MAX = 65504.0


def name_all_nodes(model: onnx.ModelProto) -> None:
    """Give every node its deterministic name (``evit_deploy.graph.node_names``), in place, so
    the plan, trtexec's layer specs and TensorRT's layer names all use the same names."""
    from evit_deploy.graph import node_names

    for node, name in zip(model.graph.node, node_names(model)):
        node.name = name


def to_fp16(model: onnx.ModelProto, islands: list[Island]) -> onnx.ModelProto:
    """fp16 with ``islands`` in fp32; no islands at all is the naive (broken) conversion."""
    from evit_deploy.graph import to_full_fp16, to_mixed_fp16

    return to_mixed_fp16(model, islands) if islands else to_full_fp16(model)


def node_ops(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph.node}


def output_counts(model: onnx.ModelProto) -> dict[str, int]:
    return {n.name: len([o for o in n.output if o]) for n in model.graph.node}


def float_outputs(model: onnx.ModelProto, nodes: set[str]) -> dict[str, list[str]]:
    """Float output tensors of ``nodes`` (island nodes: a built engine must show them in fp32
    wherever it shows them)."""
    types = _elem_types(model)
    floats = {1, 10}  # FLOAT, FLOAT16
    return {n.name: [o for o in n.output if o and types.get(o) in floats] for n in model.graph.node if n.name in nodes}


def fp32_outside_islands(typed: onnx.ModelProto, islands: list[Island]) -> list[dict[str, str]]:
    """Nodes of the typed graph that compute in fp32 (or mixed) but belong to no island, each
    with the reason; the plan lists them so nothing is fp32 unannounced."""
    from evit_deploy.graph import compute_dtypes

    inside = {n for island in islands for n in island.nodes}
    ops = node_ops(typed)
    out = []
    for node, kind in compute_dtypes(typed).items():
        if node in inside or kind not in ("fp32", "mixed"):
            continue
        op = ops.get(node, "?")
        reason = (f"{op} reads fp32 and fp16 inputs (its fixed-type inputs keep their type)" if kind == "mixed"
                  else f"{op} has no fp16 form in the rewrite, so it computes as exported")
        out.append({"node": node, "op": op, "reason": reason})
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    return types


# ------------------------------------------------------------------------------------------ overflow


@dataclass
class TensorStat:
    tensor: str
    node: str
    op: str
    max_abs: float  # over every sample, NaN ignored
    nonfinite: bool  # any inf or NaN


@dataclass
class OverflowScan:
    """What the fp16 tensors of a graph reached on some inputs at one input shape."""

    shape: list[int]
    samples: int
    tensors: int
    first_bad: TensorStat | None  # the first (graph order) tensor with inf/NaN: where it starts
    worst: list[TensorStat] = field(default_factory=list)  # largest finite max|x| (least headroom)

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["headroom"] = round(FP16_MAX / self.worst[0].max_abs, 2) if self.worst and self.worst[0].max_abs else None
        return data


def emulate_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """An fp32 graph that computes exactly what ``model`` (a typed fp16 graph) declares: every fp16
    tensor is rounded to fp16 (``Cast`` to fp16 and back) right after the node that makes it, so
    values round as fp16 storage does and anything past +-65504 becomes inf. Returns the graph
    and the names of the tensors that were fp16 (their names are kept).

    Why not run the fp16 graph itself: ONNX Runtime's CPU provider has no fp16 kernels for Conv,
    MatMul, Add, Mul, Concat, Pad, ... (measured: 1.32). It wraps them in fp32 casts and then
    drops the fp32->fp16->fp32 pairs it inserted between two such ops, so a chain of "fp16"
    ops runs in fp32, unrounded: a sum of 1e5 survives where fp16 (and TensorRT) make it inf.
    Explicit Cast pairs in an fp32 graph are kept at every optimization level.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from evit_deploy.graph._graph import unique_name

    types = _elem_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    used = {o for n in graph.node for o in n.output} | {i for n in graph.node for i in n.input}
    fp16: list[str] = []
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.FLOAT  # the rounding is added below, like any fp16 output
        rounded = []
        for k, o in enumerate(node.output):
            if o and types.get(o) == TensorProto.FLOAT16 and node.op_type != "Constant":
                raw = unique_name(f"{o}__fp32", used)
                half = unique_name(f"{o}__fp16", used)
                node.output[k] = raw
                rounded += [helper.make_node("Cast", [raw], [half], name=unique_name(f"{o}__round16", used),
                                             to=TensorProto.FLOAT16),
                            helper.make_node("Cast", [half], [o], name=unique_name(f"{o}__back32", used),
                                             to=TensorProto.FLOAT)]
                fp16.append(o)
        nodes += [node, *rounded]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # types changed: let ONNX Runtime infer them
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return out, fp16



def scan_fp16(model: onnx.ModelProto, inputs: list[np.ndarray] | list[dict[str, np.ndarray]],
              input_name: str = "input", threads: int | None = None) -> OverflowScan:
    """Run ``model`` (fp16 emulated exactly, see ``emulate_fp16``) on ONNX Runtime's CPU provider
    with every fp16 activation watched.

    Each fp16 tensor gets a small probe (``max|x|`` and an inf/NaN flag) whose scalar results
    become extra graph outputs, so the scan costs one inference per input and no copies of the
    activations. An fp16 value past +-65504 is inf, so a non-finite tensor is an overflow (or
    the NaN of inf-inf, 0/0) and the first one in graph order is its origin.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    feeds = [x if isinstance(x, dict) else {input_name: x} for x in inputs]  # several inputs: one dict each
    emulated, fp16 = emulate_fp16(model)
    derived = _data_derived(emulated, set(feeds[0]) if feeds else {input_name})
    producer = {o: n for n in model.graph.node for o in n.output}
    watched = [t for t in fp16 if t in derived]
    graph = emulated.graph
    outputs = []
    for k, tensor in enumerate(watched):
        p = f"__evit_probe{k}"
        graph.node.extend([
            helper.make_node("Abs", [tensor], [f"{p}_abs"], name=f"{p}_abs"),
            helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_max"], name=f"{p}_max", keepdims=0),
            helper.make_node("IsNaN", [tensor], [f"{p}_nan"], name=f"{p}_isnan"),
            helper.make_node("IsInf", [tensor], [f"{p}_inf"], name=f"{p}_isinf"),
            helper.make_node("Or", [f"{p}_nan", f"{p}_inf"], [f"{p}_badb"], name=f"{p}_or"),
            helper.make_node("Cast", [f"{p}_badb"], [f"{p}_badf"], name=f"{p}_badcast", to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", [f"{p}_badf"], [f"{p}_bad"], name=f"{p}_anybad", keepdims=0),
        ])
        outputs += [helper.make_tensor_value_info(f"{p}_max", TensorProto.FLOAT, []),
                    helper.make_tensor_value_info(f"{p}_bad", TensorProto.FLOAT, [])]
    graph.output.extend(outputs)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(emulated.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in outputs]
    maxes = np.zeros(len(watched))
    bad = np.zeros(len(watched), dtype=bool)
    for feed in feeds:
        values = session.run(names, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()})
        m = np.asarray(values[0::2], dtype=np.float64)
        b = np.asarray(values[1::2], dtype=np.float64) > 0
        maxes = np.fmax(maxes, np.where(np.isfinite(m), m, np.nan))
        bad |= b | ~np.isfinite(m)
    stats = [TensorStat(t, producer[t].name, producer[t].op_type, float(np.nan_to_num(maxes[k], nan=0.0)),
                        bool(bad[k])) for k, t in enumerate(watched)]
    first = next((s for s in stats if s.nonfinite), None)
    worst = sorted((s for s in stats if not s.nonfinite), key=lambda s: s.max_abs, reverse=True)[:3]
    shape = list(next(iter(feeds[0].values())).shape) if feeds else []
    return OverflowScan(shape=shape, samples=len(feeds), tensors=len(watched), first_bad=first, worst=worst)


def _data_derived(model: onnx.ModelProto, input_names: set[str]) -> set[str]:
    """Tensors whose values depend on the inputs (Shape/Size break the dependence)."""
    derived = set(input_names)
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        if any(i in derived for i in node.input if i):
            derived.update(o for o in node.output if o)
    return derived


def raise_on_overflow(scan: OverflowScan, where: str) -> None:
    """CheckFailed (exit 1) naming the tensor where fp16 first overflows."""
    bad = scan.first_bad
    if bad is None:
        return
    shape = "x".join(str(d) for d in scan.shape)
    hint = ("it leaves an fp32 island: the island's result itself exceeds fp16"
            if bad.op == "Cast" else "keep its computation in fp32 (--keep-fp32 attention,resize)")
    raise CheckFailed(
        f"fp16 overflow at {shape} ({where}): tensor {bad.tensor!r} (output of {bad.op} node {bad.node!r}) "
        f"is inf/NaN; {hint}, or lower --max-shape"
    )
