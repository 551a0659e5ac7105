"""Accuracy-controlled int8 for Q/DQ ONNX (ONNX Runtime's and TensorRT's schemes): which nodes to keep float.

The Q/DQ side of ``evit_deploy.accuracy_control``, shared by ``--target onnx`` and ``--target
trt``: it ranks the quantised nodes, builds a candidate with some of them float (excluded from
``quantize_static``, on the ranges calibrated once) and measures a candidate's agreement with
PyTorch on the held-out calibration images, on ONNX Runtime (for TensorRT's graph too: ORT
computes its Q/DQ as TensorRT's explicit quantisation defines it, so a GPU is not needed to
choose the nodes; the engine's own agreement is verify's to check on the device).

The ranking is each node's effect on the model's output when it alone is quantised: the graph
with every other quantisable node float, run on a few calibration images spread over the set,
and the class margin it takes away where PyTorch's top two classes are nearly tied
(``accuracy_control.margin_lost``, as the TFLite control ranks). The graph is the float one
with the node's Q/DQ copied from the plain int8 graph (``only_quantised``), so a node costs a
session and two runs, and they are worth it. On seeded seg-B1 (128x256, TensorRT's scheme, 87
convs) the output's noise power already ranked the nodes by the pixel agreement each costs
alone with Spearman 0.91, where the error a node adds at its own output (its cut run on the
float graph's inputs, as ``evit debug`` measures a layer alone) reached 0.26: the projection
convs that feed the residual sums cost the most at the output and little where they are. The
margin ranks better still: ORT's control on seeded seg-B1 at 512x1024 met 0.94 with 44 of 110
nodes float, where noise power reached 0.908 with 55. Nodes are named by PyTorch module path
(the exporter's scopes), so the manifest lists the kept nodes as users know them.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.accuracy_control import (
    ControlOptions,
    ControlResult,
    Measured,
    Outcome,
    Ranked,
    control_details,
    control_goal,
    control_images,
    control_split,
    keep_float_until,
    margin_lost,
    near_ties,
    outcome,
    ranked_by,
    spread,
)
from evit_deploy.control_goal import Goal, Timed
from evit_deploy.onnx.layer_map import module_scopes

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

    from evit_deploy.contracts import ExportContext
    from evit_deploy.onnx.options import OnnxOptions
    from evit_deploy.onnx.qdq import QdqScheme
    from evit_deploy.spec import InputSpec

CLASS_AXIS = 1  # the ONNX graphs' logits: NCHW maps, or (N, classes)
RANKING_IMAGES = 2  # per node: this many runs of the graph with it alone quantised
RANKED_BY = ranked_by("node", "the graph with only that node quantised", RANKING_IMAGES)


@dataclass(frozen=True)
class QdqNode:
    """A quantised node: its PyTorch name, its node name, the tensor it writes, and the nodes that go
    float with it (itself first; with its companions, such as the int8 HardSwish after a conv)."""

    name: str
    node: str
    output: str
    members: tuple[str, ...]


def quantised_nodes(graph: onnx.ModelProto, quantized: onnx.ModelProto, op_types: list[str],
                    companions: dict[str, list[str]] | None = None) -> list[QdqNode]:
    """The nodes of ``op_types`` in ``quantized`` with a quantised activation input (Q -> DQ -> node), in
    graph order (a float node reading a dequantised tensor is not one: keeping it float changes nothing).
    ``companions``: node -> nodes that go float with it; a quantised companion joins its node's unit
    (or, where that node is not quantised, the unit of the first quantised companion)."""
    producer = {o: n for n in quantized.graph.node for o in n.output}
    float_nodes = {n.name: n for n in graph.graph.node}
    quantised = []
    for node in quantized.graph.node:
        if node.op_type not in op_types or node.name not in float_nodes:
            continue
        dequantised = [producer.get(name) for name in node.input]
        if any(dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer
               and producer[dq.input[0]].op_type == "QuantizeLinear" for dq in dequantised):
            quantised.append(node)
    names = {n.name for n in quantised}
    owner: dict[str, str] = {}
    for lead, group in (companions or {}).items():
        inside = [c for c in group if c in names]
        head = lead if lead in names else (inside[0] if inside else None)
        owner.update({c: head for c in inside if head is not None and c != head})
    found, seen = [], set()
    for node in quantised:
        if node.name in owner:
            continue
        scopes = module_scopes(float_nodes[node.name])
        name = scopes[-1] if scopes else node.name
        name = name if name not in seen else f"{name}:{node.name}"
        seen.add(name)
        members = (node.name, *[c.name for c in quantised if owner.get(c.name) == node.name])
        found.append(QdqNode(name, node.name, node.output[0], members))
    return found


def _session(model: onnx.ModelProto | Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _outputs(model: onnx.ModelProto, images: list[np.ndarray], input_name: str) -> list[np.ndarray]:
    session = _session(model)
    return [np.asarray(session.run(None, {input_name: image})[0], np.float32) for image in images]


def only_quantised(graph: onnx.ModelProto, quantized: onnx.ModelProto, node: QdqNode,
                   outputs_quantised: bool) -> onnx.ModelProto:
    """``graph`` (float) with ``node`` (its members) alone quantised as in ``quantized``: their Q/DQ
    inputs, weights and bias, and (``outputs_quantised``: the scheme rounds the quantised ops' outputs)
    their outputs' Q/DQ, copied over with their constants. Only the nodes' own rounding:
    ``quantize_static`` with every other node excluded would also hand the rounded input to the
    float nodes reading the same tensor."""
    import onnx

    producer = {o: n for n in quantized.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in quantized.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    int8 = {n.name: n for n in quantized.graph.node if n.name in node.members}
    before: dict[str, list[Any]] = {}  # member -> its input Q/DQ
    after: dict[str, list[Any]] = {}  # member -> its output Q and DQ
    for name, target in int8.items():
        before[name] = []
        for tensor in target.input:  # DQ <- (Q <- float tensor) or DQ <- int8 constant
            dq = producer.get(tensor)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producer.get(dq.input[0])
                before[name] += ([q] if q is not None and q.op_type == "QuantizeLinear" else []) + [dq]
        quantize = [r for r in readers.get(target.output[0], []) if r.op_type == "QuantizeLinear"] \
            if outputs_quantised else []
        dequantize = [r for r in readers.get(quantize[0].output[0], []) if r.op_type == "DequantizeLinear"] \
            if quantize else []
        after[name] = [quantize[0], dequantize[0]] if dequantize else []
    copied = [n for name in int8 for n in before[name] + after[name]]
    constants = {i for n in copied for i in n.input} | {i for t in int8.values() for i in t.input}
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    present = {i.name for i in out.graph.initializer}
    out.graph.initializer.extend(i for i in quantized.graph.initializer if i.name in constants and i.name not in present)
    # a float op the quantiser folded into a member's output rounding (a Clip or Relu after it: the
    # int8 node writes that op's output name) goes: the rounding's saturation does its work
    made = {o for t in int8.values() for o in t.output} | {o for n in copied for o in n.output}
    absorbed = {n.name for n in out.graph.node if n.name not in int8 and made & set(n.output)}
    rename: dict[str, str] = {}
    nodes, added = [], set()
    for n in out.graph.node:
        if n.name in absorbed:
            continue
        if n.name in int8:  # its input Q/DQ, its int8 self (outputs named as the int8 graph names them), its output Q/DQ
            target = int8[n.name]
            if after[n.name]:
                for name in {n.output[0], target.output[0]} - {after[n.name][1].output[0]}:
                    rename[name] = after[n.name][1].output[0]  # the float graph's readers take the rounded value
            for q in before[n.name]:  # a Q/DQ two members share goes in once
                if q.name not in added:
                    nodes.append(q)
                    added.add(q.name)
            nodes.append(onnx.NodeProto())
            nodes[-1].CopyFrom(target)
            nodes += after[n.name]
            added |= {q.name for q in after[n.name]}
            continue
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [i for i in out.graph.initializer if i.name not in made]  # a dequantised bias keeps the float bias's name
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def node_macs(graph: onnx.ModelProto) -> dict[str, int]:
    """Multiply-adds of each node of a static ``graph`` for one input: each output element takes a
    weight row of a Conv (over its window and group's channels) or a MatMul/Gemm with constant
    weights, and one operation for any other node, whose time goes with its output's size."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(graph)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {i.name: list(i.dims) for i in graph.graph.initializer}
    macs = {}
    for node in graph.graph.node:
        elements = int(np.prod(shapes.get(node.output[0], [0]) or [1], dtype=np.int64)) if node.output else 0
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        row = 1
        if weight and node.op_type == "Conv":
            row = int(np.prod(weight[1:], dtype=np.int64))
        elif weight and node.op_type in ("MatMul", "Gemm"):
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            row = weight[1] if transposed else weight[0]
        macs[node.name] = elements * max(1, row)
    return macs


def rank_nodes(graph: onnx.ModelProto, quantized: onnx.ModelProto, nodes: list[QdqNode], images: list[np.ndarray],
               input_name: str, outputs_quantised: bool,
               progress: Callable[[str], None]) -> tuple[list[Ranked], dict[str, str]]:
    """``nodes`` by the class margin each alone takes away (worst first), over ``images``, and the
    nodes whose graph ONNX Runtime refused, each with its one-line reason (ranked last, score 0).
    A node's cost is the multiply-adds of its members (``node_macs``)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph

    ties = near_ties(_outputs(graph, images, input_name), CLASS_AXIS)
    scores: dict[str, float] = {}
    unranked: dict[str, str] = {}
    for index, node in enumerate(nodes):
        if index % 10 == 0:
            progress(f"accuracy control: node {index + 1}/{len(nodes)} quantised alone")
        try:
            alone = _outputs(only_quantised(graph, quantized, node, outputs_quantised), images, input_name)
        except (Fail, InvalidGraph) as err:
            scores[node.name], unranked[node.name] = 0.0, str(err).strip().splitlines()[0]
            continue
        scores[node.name] = margin_lost(ties, alone, CLASS_AXIS)
    macs = node_macs(graph)
    ranked = (Ranked(n.name, scores[n.name], sum(macs.get(m, 0) for m in n.members)) for n in nodes)
    return sorted(ranked, key=lambda r: -r.score), unranked


def control_qdq(graph: onnx.ModelProto, quantise: Callable[[list[str]], onnx.ModelProto], goal: Goal, *,
                ranged: list[np.ndarray], input_name: str,
                op_types: list[str], outputs_quantised: bool, session: OnnxOptions | None, max_float_share: float,
                companions: dict[str, list[str]],
                progress: Callable[[str], None]) -> tuple[ControlResult[onnx.ModelProto], float, dict[str, Any]]:
    """The Q/DQ graph with the fewest worst nodes float that meets ``goal``, and the plain int8
    graph's score.

    ``quantise(nodes)`` quantises ``graph`` with those node names float too (on ranges taken from
    ``ranged``); ``companions``: node -> nodes kept float with it (``quantised_nodes``);
    ``session``: the ONNX Runtime settings the artifact runs with, or None when ONNX Runtime only
    stands in for another runtime (TensorRT): then the agreement is measured with the defaults
    and the kept nodes are not timed. The third value, for the manifest: per kept
    node, its kernel time in the plain int8 graph and in the returned one (ORT's profiler, on a
    calibration image), and the nodes that could not be ranked, with why."""
    import onnx

    from evit_deploy.onnx.options import OnnxOptions
    from evit_deploy.onnx.runner import OnnxRunner

    plain = quantise([])
    nodes = quantised_nodes(graph, plain, op_types, companions)
    node_of = {n.name: n.node for n in nodes}
    members_of = {n.name: list(n.members) for n in nodes}
    output_of = {n.name: n.output for n in nodes}
    max_kept = int(max_float_share * len(nodes))
    ranking: list[Ranked] = []  # with none allowed float, plain int8 is the only candidate: nothing to rank
    unranked: dict[str, str] = {}
    if max_kept:
        progress(f"accuracy control: ranking {len(nodes)} quantised nodes by the class margin each alone takes away")
        ranking, unranked = rank_nodes(graph, plain, nodes, spread(ranged, RANKING_IMAGES), input_name,
                                       outputs_quantised, progress)

    def candidate(names: list[str]) -> onnx.ModelProto:
        return plain if not names else quantise([m for n in names for m in members_of[n]])

    with tempfile.TemporaryDirectory(prefix="evit-control-") as tmp:
        def measure(quantized: onnx.ModelProto) -> Measured:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(quantized, str(path))
            with OnnxRunner(path, session=session or OnnxOptions()) as runner:
                output = runner.outputs[0].name
                timed = Timed(lambda image: np.asarray(runner.infer({input_name: image})[output]))
                return goal.score(timed), timed.extra

        result = keep_float_until(ranking, candidate, measure, goal.target, max_kept=max_kept, progress=progress)
        extra: dict[str, Any] = {"unranked": unranked} if unranked else {}
        if session is not None and result.kept:
            progress("accuracy control: timing the kept nodes, int8 and float")
            before = _node_times(plain, Path(tmp) / "plain.onnx", session, {input_name: ranged[0]})
            after = _node_times(result.candidate, Path(tmp) / "chosen.onnx", session, {input_name: ranged[0]})
            extra["kept_float_latency"] = {
                "per_node": [{"layer": name, "node": node_of[name],
                              "int8_ms": _of(before, node_of[name], output_of[name]),
                              "float_ms": _of(after, node_of[name], output_of[name])} for name in result.kept],
                "measured": f"ONNX Runtime's profiler, {PROFILE_ITERS} runs of a calibration image: each kept node's "
                            "own kernel, quantised (plain int8) and float (this artifact); the Q/DQ around them is "
                            "not included, the whole-model cost is in steps' ms_per_image"}
    plain_step = next(s for s in result.steps if s.kept == 0)
    return result, plain_step.agreement, extra


PROFILE_ITERS = 5


def _node_times(model: onnx.ModelProto, path: Path, session: OnnxOptions,
                feed: dict[str, np.ndarray]) -> dict[str, float]:
    """ms per run of every kernel ONNX Runtime ran (by its node's name, fused ones included)."""
    import onnx

    from evit_deploy.onnx.runner import OnnxRunner

    onnx.save(model, str(path))
    with OnnxRunner(path, session=session) as runner:
        return {row.name: row.total_ms for row in runner.per_layer(feed, PROFILE_ITERS)}


def _of(times: dict[str, float], node: str, output: str) -> float | None:
    """The kernel time of ``node`` (writing ``output``): ORT names a fused kernel after the first
    node it took in (``node_Conv_12_token_3``: a QLinearConv made of node_Conv_12 and its Q/DQ), and
    a blocked-layout convolution after its output (``getitem_3_nchwc``)."""
    hits = [ms for name, ms in times.items()
            if name == node or name.startswith(f"{node}_") or name == f"{output}_nchwc"]
    return round(sum(hits), 3) if hits else None


Quantise = Callable[[list[str], list[np.ndarray], dict[str, Any]], "tuple[onnx.ModelProto, dict[str, Any]]"]


def controlled_int8(graph: onnx.ModelProto, model: torch.nn.Module, spec: InputSpec, ctx: ExportContext,
                    options: ControlOptions, session: OnnxOptions | None, scheme: QdqScheme, op_types: list[str],
                    quantise: Quantise, material: dict[str, Any],
                    companions: dict[str, list[str]] | None = None) -> tuple[onnx.ModelProto, dict[str, Any], Outcome]:
    """A target's int8 graph under ``--min-agreement`` or ``--max-drop``: its details
    (``accuracy_control`` added) and what the export says. ``op_types``: the quantised op types;
    ``quantise(float_nodes, images, key_material)`` is the target's Q/DQ quantisation with those
    nodes float too, calibrated on ``images`` (cached under the key); ``companions``: see
    ``quantised_nodes``."""
    ranged, held = control_split(control_images(ctx, spec, options), options)
    if held:
        ctx.progress(f"accuracy control: {len(held)} calibration image(s) held out for agreement")
        material = {**material, "holdout": options.holdout}  # the ranges come from the rest of the images
    infos: dict[int, dict[str, Any]] = {}

    def candidate(float_nodes: list[str]) -> onnx.ModelProto:
        quantized, info = quantise(float_nodes, ranged, material)
        infos[id(quantized)] = {**info, "accuracy_control_float_nodes": float_nodes}
        return quantized

    goal = control_goal(model, ctx, spec, options, held)
    result, plain, extra = control_qdq(graph, candidate, goal, ranged=ranged, input_name=spec.name,
                                       op_types=op_types, outputs_quantised=scheme.quantize_outputs, session=session,
                                       max_float_share=options.max_float_share, companions=companions or {},
                                       progress=ctx.progress)
    control = {**control_details(result, plain, goal, RANKED_BY), **extra}
    details = {**infos[id(result.candidate)], "accuracy_control": control}
    return result.candidate, details, outcome(result, plain, goal, ctx.model_name)
