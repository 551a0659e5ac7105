"""Accuracy-controlled int8 for TFLite: which quantised layers to keep float (``--min-agreement``).

The TFLite side of ``evit_deploy.accuracy_control``: it ranks the quantised layers, builds a
candidate with some of them float (ai-edge-quantizer's per-op ``no_quantize`` recipe, on the
ranges calibrated once) and measures a candidate's agreement with PyTorch on the held-out
calibration images.

The ranking is what each layer alone does to the classes: the float model with only that layer's
op int8 (its input, weights and output rounded on the ranges of plain int8), run on a few
calibration images spread over the set, and the class margin it takes away where PyTorch's top
two classes are nearly tied (``accuracy_control.margin_lost``). It is one quantisation and a few
float-speed inferences a layer (about 2.5 minutes for seg-B1's 141 layers at 512x1024 here).
The noise power a layer puts on the logits ranked as well on the trained instrument, and worse
on seeded weights, where most of it fell on pixels whose class it could not change. The error a
layer adds at its own output (``evit debug``'s measure) says less of what reaches
the classes: MSE ranges clip what a HardSwish zeroes, which looks like noise at the conv's
output, and a layer the network damps ranks as high as one it amplifies. Ranked by it, the
trained instrument's control needed 9 layers float for 0.99, by noise power 7, by this 6. Layers
are named by PyTorch module path through the export's layer map, so the manifest lists the kept
layers as users know them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.accuracy_control import (
    ControlResult,
    Measured,
    Ranked,
    keep_float_until,
    margin_lost,
    near_ties,
    ranked_by,
)
from evit_deploy.control_goal import Goal, Timed
from evit_deploy.spec import to_layout
from evit_deploy.tflite.graph import QUANT_OPS, Graph, op_is_int8, op_macs
from evit_deploy.tflite.layer_map import layer_map_and_op_modules
from evit_deploy.tflite.logs import native_logs_quiet

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from evit_deploy.tflite.quantize import Int8Plan


RANKING_IMAGES = 4  # each layer alone runs on this many calibration images
RANKED_BY = ranked_by("layer", "the float model with only that layer's op int8", RANKING_IMAGES)


PADDING = {"PAD", "PADV2"}  # a strided conv's explicit padding: the converter splits it off as its own op


@dataclass(frozen=True)
class Layer:
    """A quantised op of the float graph: its PyTorch name, its output tensor, the output tensors
    of the ops quantised and kept float with it (``own``: itself and the pad that feeds only it),
    and those of the ops that go float with it (``selects``: its own, and its output's readers).

    Keeping an op float alone would keep little: its int8 readers would round its output again,
    so only its weights' rounding would go. With its readers float too, its output is never
    rounded; the rounding moves to the readers' outputs, whose ranges are set by other values.
    A strided conv's pad goes with the conv: left int8 under a float conv, it would still round
    the conv's input, and cost a QUANTIZE, PAD, DEQUANTIZE round trip over the whole map (at
    the stem, the full-resolution image).
    """

    name: str
    own: tuple[str, ...]
    selects: tuple[str, ...]
    macs: int  # of the ops that go float with it: what keeping it float costs

    @property
    def tensor(self) -> str:
        """The output of the layer's op (the one its name and its range are for)."""
        return self.own[0]


def _interpreter(content: bytes, threads: int | None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    with native_logs_quiet():
        interpreter = Interpreter(model_content=content, num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


def _run(interpreter: Any, image: np.ndarray) -> None:
    (detail,) = interpreter.get_input_details()[:1]
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(image, dtype=np.float32))
    interpreter.invoke()


def quantised_layers(plan: Int8Plan, quantized: bytes, model: torch.nn.Module) -> list[Layer]:
    """The ops plain int8 quantises, named by the deepest PyTorch module whose output they make
    (a torch building block such as ``...inverted_conv.conv`` where the model's own module ends
    later, after a float activation). An op inside a module, whose output no module returns (one
    of the convs exact bicubic upsampling is written as), is named by the module that runs it, its
    op type and index: the converter's tensor name is a 200-character stack no user can read."""
    done = Graph(quantized)
    int8_names = {done.tensor_name(op["outputs"][0]) for op in done.ops
                  if op["outputs"] and op["type"] not in QUANT_OPS and op_is_int8(done, op)}
    modules: dict[str, tuple[bool, int, str]] = {}  # the model's own module first, then the deepest
    layer_map, runs_in = layer_map_and_op_modules(plan.marked, model)
    for entry in layer_map.layers:
        name = plan.graph.tensor_name(int(entry.tensor)) if entry.tensor.isdigit() else entry.tensor
        rank = (not entry.is_torch_primitive, entry.depth, entry.module)
        if rank > modules.get(name, (False, -1, "")):
            modules[name] = rank
    graph = plan.graph
    pads: dict[int, list[int]] = {}  # op index -> the int8 pads (op indices) that feed only it
    for op in graph.ops:
        readers = graph.consumers.get(op["outputs"][0], []) if op["outputs"] else []
        if (op["type"] in PADDING and len(readers) == 1 and graph.tensor_name(op["outputs"][0]) in int8_names
                and graph.ops[readers[0]]["outputs"]
                and graph.tensor_name(graph.ops[readers[0]]["outputs"][0]) in int8_names):
            pads.setdefault(readers[0], []).append(op["index"])
    folded = {pad for indices in pads.values() for pad in indices}
    layers, seen = [], set()
    for op in graph.ops:
        if not op["outputs"] or op["index"] in folded:
            continue
        tensor = graph.tensor_name(op["outputs"][0])
        if tensor in int8_names:
            name = modules[tensor][2] if tensor in modules else _inside(runs_in[op["index"]], op, tensor)
            name = name if name not in seen else f"{name}:{tensor}"
            seen.add(name)
            own_ops = [op["index"], *pads.get(op["index"], [])]
            own = tuple(graph.tensor_name(graph.ops[i]["outputs"][0]) for i in own_ops)
            readers = graph.consumers.get(op["outputs"][0], [])
            selects = [*own] + [graph.tensor_name(t) for r in readers for t in graph.ops[r]["outputs"][:1]]
            macs = sum(op_macs(graph, graph.ops[i]) for i in {*own_ops, *readers})
            layers.append(Layer(name, own, tuple(dict.fromkeys(selects)), macs))
    return layers


def _inside(module: str | None, op: dict[str, Any], tensor: str) -> str:
    """The name of an op no module ends with: where it runs (the converter's tensor name when it
    runs outside every module)."""
    if module is None:
        return tensor
    return f"{module or '(model)'}: {op['type']} op {op['index']}"


def rank_layers(plan: Int8Plan, ranges: dict[str, Any], layers: list[Layer], images: list[np.ndarray],
                class_axis: int, threads: int | None, progress: Callable[[str], None]) -> list[Ranked]:
    """``layers`` by the class margin each alone takes away (worst first): the float model with
    only that layer's op int8 (its input, weights and output rounded; every other quantised op
    float, on the same ranges), its outputs against the float model's over ``images`` at the
    near-tied pixels (``accuracy_control.margin_lost``; ``class_axis``: where the outputs hold
    the classes). A layer whose model cannot be built or run alone is ranked last (score 0)."""
    ties = near_ties(_outputs(plan.marked, images, threads), class_axis)
    tensors = [t for layer in layers for t in layer.own]
    scores: dict[str, float] = {}
    for number, layer in enumerate(layers):
        if number % 20 == 0:
            progress(f"accuracy control: layer {number + 1}/{len(layers)} quantised alone")
        try:
            alone = _outputs(plan.quantize(ranges, [t for t in tensors if t not in layer.own]), images, threads)
        except (RuntimeError, ValueError):  # what the quantiser or LiteRT refuses for this op alone
            scores[layer.name] = 0.0
            continue
        scores[layer.name] = margin_lost(ties, alone, class_axis)
    return sorted((Ranked(layer.name, scores[layer.name], layer.macs) for layer in layers), key=lambda r: -r.score)


def _outputs(content: bytes, images: list[np.ndarray], threads: int | None) -> list[np.ndarray]:
    interpreter = _interpreter(content, threads)
    (out,) = interpreter.get_output_details()[:1]
    results = []
    for image in images:
        _run(interpreter, image)
        results.append(np.asarray(interpreter.get_tensor(out["index"]), np.float32))
    return results


def control_int8(plan: Int8Plan, ranges: dict[str, Any], model: torch.nn.Module, goal: Goal, *,
                 ranking_images: list[np.ndarray], nhwc: bool, class_axis: int, max_float_share: float,
                 threads: int | None, progress: Any) -> tuple[ControlResult[bytes], float]:
    """The int8 model with the fewest worst layers float that meets ``goal``, and the plain int8
    model's score.

    ``ranking_images`` are in the artifact's layout (``nhwc``), the goal's images NCHW;
    ``class_axis``: where the artifact's output holds the classes.
    """
    plain = plan.quantize(ranges)
    layers = quantised_layers(plan, plain, model)
    by_name = {layer.name: layer.selects for layer in layers}
    max_kept = int(max_float_share * len(layers))
    ranking = []  # with none allowed float, plain int8 is the only candidate: nothing to rank
    if max_kept:
        progress(f"accuracy control: ranking {len(layers)} quantised layers by the class margin each alone takes away")
        ranking = rank_layers(plan, ranges, layers, ranking_images, class_axis, threads, progress)

    def quantise(names: list[str]) -> bytes:
        return plain if not names else plan.quantize(ranges, [t for n in names for t in by_name[n]])

    def measure(content: bytes) -> Measured:
        interpreter = _interpreter(content, threads)
        (out,) = interpreter.get_output_details()[:1]

        def predict(image: np.ndarray) -> np.ndarray:
            _run(interpreter, to_layout(image, "NCHW", "NHWC") if nhwc else image)
            logits = np.asarray(interpreter.get_tensor(out["index"]), np.float32)
            return np.moveaxis(logits, class_axis, 1)

        timed = Timed(predict)
        return goal.score(timed), timed.extra

    result = keep_float_until(ranking, quantise, measure, goal.target, max_kept=max_kept, progress=progress)
    plain_step = next(s for s in result.steps if s.kept == 0)
    return result, plain_step.agreement
