"""Accuracy-controlled int8 for Q/DQ ONNX (ONNX Runtime's and TensorRT's schemes): which nodes to keep float.

The Q/DQ side of ``evit_deploy.accuracy_control``, shared by ``--target onnx`` and ``--target
trt``: it ranks the quantised nodes, builds a candidate with some of them float (excluded from
``quantize_static``, on the ranges calibrated once) and measures a candidate's agreement with
PyTorch on the held-out calibration images, on ONNX Runtime (for TensorRT's graph too: ORT
computes its Q/DQ as TensorRT's explicit quantisation defines it, so a GPU is not needed to
choose the nodes; the engine's own agreement is verify's to check on the device).

The ranking is the error each node adds by itself, as ``evit debug`` measures it: the plain
int8 graph cut from the float tensors its Q/DQ inputs quantise to the tensor its readers get
(its own output, or that output quantised and dequantised where the scheme quantises outputs),
fed the float graph's values, its result against the float graph's (relative noise power
``||int8 - float||^2 / ||float||^2``). Nodes are named by PyTorch module path (the exporter's
scopes), so the manifest lists the kept nodes as users know them.
"""
from __future__ import annotations

import tempfile
import time
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
    agreement,
    control_details,
    control_images,
    keep_float_until,
    outcome,
    reference_labels,
    split_holdout,
)
from evit_deploy.onnx.cut import CutError, cut, extractor
from evit_deploy.onnx.layer_map import module_scopes

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

    from evit_deploy.contracts import ExportContext
    from evit_deploy.onnx.options import OnnxOptions
    from evit_deploy.spec import InputSpec

RANKED_BY = ("error each quantised node adds alone (the int8 graph cut at its float inputs, fed the float graph's "
             "values; relative noise power against float), over calibration images")


@dataclass(frozen=True)
class QdqNode:
    """A quantised node: its PyTorch name, its node name, the float tensors its quantised inputs
    come from, the float graph's tensor it writes, and the tensor its readers get in the int8 graph."""

    name: str
    node: str
    inputs: tuple[str, ...]
    output: str
    read: str


def quantised_nodes(graph: onnx.ModelProto, quantized: onnx.ModelProto, op_types: list[str]) -> list[QdqNode]:
    """The nodes of ``op_types`` in ``quantized`` with a quantised activation input (Q -> DQ -> node), in
    graph order (a float node reading a dequantised tensor is not one: keeping it float changes nothing)."""
    producer = {o: n for n in quantized.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in quantized.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    float_nodes = {n.name: n for n in graph.graph.node}
    found, seen = [], set()
    for node in quantized.graph.node:
        if node.op_type not in op_types or node.name not in float_nodes:
            continue
        sources = []
        for name in node.input:
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                sources.append(q.input[0])
        if not sources:
            continue
        output = node.output[0]
        read = output
        q_out = [r for r in readers.get(output, []) if r.op_type == "QuantizeLinear"]
        dq_out = [r for r in readers.get(q_out[0].output[0], []) if r.op_type == "DequantizeLinear"] if q_out else []
        if dq_out:
            read = dq_out[0].output[0]
        scopes = module_scopes(float_nodes[node.name])
        name = scopes[-1] if scopes else node.name
        name = name if name not in seen else f"{name}:{node.name}"
        seen.add(name)
        found.append(QdqNode(name, node.name, tuple(dict.fromkeys(sources)), output, read))
    return found


def _session(model: onnx.ModelProto | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def float_values(graph: onnx.ModelProto, tensors: set[str], images: list[np.ndarray],
                 input_name: str) -> list[dict[str, np.ndarray]]:
    """The float graph's value of each of ``tensors`` on each image."""
    import onnx

    exposed = onnx.ModelProto()
    exposed.CopyFrom(graph)
    outputs = {o.name for o in exposed.graph.output}
    made = {o for n in exposed.graph.node for o in n.output}
    for name in sorted(tensors - outputs):
        if name in made:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    session = _session(exposed)
    names = [o.name for o in session.get_outputs()]
    values = []
    for image in images:
        run = dict(zip(names, session.run(names, {input_name: image})))
        run[input_name] = image
        values.append({k: np.asarray(v, np.float32) for k, v in run.items() if k in tensors})
    return values


def rank_nodes(graph: onnx.ModelProto, quantized: onnx.ModelProto, nodes: list[QdqNode], images: list[np.ndarray],
               input_name: str) -> list[Ranked]:
    """``nodes`` by the error each adds alone (worst first), over ``images``."""
    values = float_values(graph, {t for n in nodes for t in (*n.inputs, n.output)}, images, input_name)
    extract = extractor(quantized)
    scores: dict[str, float] = {}
    for node in nodes:
        if any(t not in values[0] for t in (*node.inputs, node.output)):
            scores[node.name] = 0.0  # not measurable alone: ranked last
            continue
        try:
            session = _session(cut(extract, list(node.inputs), [node.read]))
        except CutError:
            scores[node.name] = 0.0
            continue
        noise = power = 0.0
        for value in values:
            (got,) = session.run([node.read], {name: value[name] for name in node.inputs})
            ref = value[node.output]
            noise += float(np.sum((np.asarray(got, np.float32).reshape(ref.shape) - ref) ** 2))
            power += float(np.sum(ref ** 2))
        scores[node.name] = noise / power if power else 0.0
    return sorted((Ranked(n.name, scores[n.name]) for n in nodes), key=lambda r: -r.score)


def control_qdq(graph: onnx.ModelProto, quantise: Callable[[list[str]], onnx.ModelProto], model: torch.nn.Module, *,
                target: float, ranged: list[np.ndarray], held_out: list[np.ndarray], input_name: str,
                op_types: list[str], session: OnnxOptions | None, max_float_share: float,
                progress: Callable[[str], None]) -> tuple[ControlResult[onnx.ModelProto], float, list[dict[str, Any]]]:
    """The Q/DQ graph with the fewest worst nodes float that agrees with PyTorch on ``held_out``
    to ``target``, and the plain int8 graph's agreement.

    ``quantise(nodes)`` quantises ``graph`` with those node names float too (on ranges taken from
    ``ranged``); ``session``: the ONNX Runtime settings the artifact runs with, or None when ONNX
    Runtime only stands in for another runtime (TensorRT): then the agreement is measured with
    the defaults and the kept nodes are not timed. The third value: per kept node, its kernel
    time in the plain int8 graph and in the returned one (ORT's profiler, on a held-out image)."""
    import onnx

    from evit_deploy.onnx.options import OnnxOptions
    from evit_deploy.onnx.runner import OnnxRunner

    progress("accuracy control: PyTorch on the held-out images")
    labels = reference_labels(model, held_out, 1)
    plain = quantise([])
    nodes = quantised_nodes(graph, plain, op_types)
    node_of = {n.name: n.node for n in nodes}
    output_of = {n.name: n.output for n in nodes}
    progress(f"accuracy control: ranking {len(nodes)} quantised nodes by the noise each adds")
    ranking = rank_nodes(graph, plain, nodes, ranged[:4], input_name)

    def candidate(names: list[str]) -> onnx.ModelProto:
        return plain if not names else quantise([node_of[n] for n in names])

    with tempfile.TemporaryDirectory(prefix="evit-control-") as tmp:
        def measure(quantized: onnx.ModelProto) -> Measured:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(quantized, str(path))
            seconds, predicted = 0.0, []
            with OnnxRunner(path, session=session or OnnxOptions()) as runner:
                output = runner.outputs[0].name
                for image in held_out:
                    started = time.perf_counter()
                    logits = runner.infer({input_name: image})[output]
                    seconds += time.perf_counter() - started
                    predicted.append(np.asarray(logits).argmax(axis=1))
            return agreement(predicted, labels), {"ms_per_image": round(1000 * seconds / len(held_out), 1)}

        result = keep_float_until(ranking, candidate, measure, target,
                                  max_kept=int(max_float_share * len(ranking)), progress=progress)
        costs = []
        if session is not None and result.kept:
            progress("accuracy control: timing the kept nodes, int8 and float")
            before = _node_times(plain, Path(tmp) / "plain.onnx", session, {input_name: held_out[0]})
            after = _node_times(result.candidate, Path(tmp) / "chosen.onnx", session, {input_name: held_out[0]})
            costs = [{"layer": name, "node": node_of[name], "int8_ms": _of(before, node_of[name], output_of[name]),
                      "float_ms": _of(after, node_of[name], output_of[name])} for name in result.kept]
    plain_step = next(s for s in result.steps if s.kept == 0)
    return result, plain_step.agreement, costs


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
                    options: ControlOptions, session: OnnxOptions | None, op_types: list[str], quantise: Quantise,
                    material: dict[str, Any]) -> tuple[onnx.ModelProto, dict[str, Any], Outcome]:
    """A target's int8 graph under ``--min-agreement``: its details (``accuracy_control`` added) and
    what the export says. ``op_types``: the quantised op types; ``quantise(float_nodes, images, key_material)`` is the target's Q/DQ
    quantisation with those nodes float too, calibrated on ``images`` (cached under the key)."""
    assert options.min_agreement is not None
    ranged, held = split_holdout(control_images(ctx, spec), options.holdout)
    ctx.progress(f"accuracy control: {len(held)} calibration image(s) held out for agreement")
    material = {**material, "holdout": options.holdout}  # the ranges come from the rest of the images
    infos: dict[int, dict[str, Any]] = {}

    def candidate(float_nodes: list[str]) -> onnx.ModelProto:
        quantized, info = quantise(float_nodes, ranged, material)
        infos[id(quantized)] = {**info, "accuracy_control_float_nodes": float_nodes}
        return quantized

    result, plain, costs = control_qdq(graph, candidate, model, target=options.min_agreement, ranged=ranged,
                                held_out=held, input_name=spec.name, op_types=op_types, session=session,
                                max_float_share=options.max_float_share, progress=ctx.progress)
    control = control_details(result, plain, len(held), RANKED_BY)
    if costs:
        control["kept_float_latency"] = {
            "per_node": costs, "measured": f"ONNX Runtime's profiler, {PROFILE_ITERS} runs of a held-out image: "
            "each kept node's own kernel, quantised (plain int8) and float (this artifact); the Q/DQ around "
            "them is not included, the whole-model cost is in steps' ms_per_image"}
    details = {**infos[id(result.candidate)], "accuracy_control": control}
    return result.candidate, details, outcome(result, plain, len(held), ctx.model_name)
