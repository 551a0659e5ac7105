"""Accuracy-controlled int8 for TFLite: which quantised layers to keep float (``--min-agreement``).

The TFLite side of ``evit_deploy.accuracy_control``: it ranks the quantised layers, builds a
candidate with some of them float (ai-edge-quantizer's per-op ``no_quantize`` recipe, on the
ranges calibrated once) and measures a candidate's agreement with PyTorch on the held-out
calibration images.

The ranking is the error each layer adds by itself, as ``evit debug`` measures it: the
plain int8 model cut to the layer's op, fed the float model's values of its inputs (quantised
as its int8 inputs are), its output against the float model's (relative noise power
``||int8 - float||^2 / ||float||^2``), both taken through the activation that alone reads the
output (``tflite.ranges.read_through``): the ranges clip what a HardSwish zeroes, so before it
the clipped tail would look like noise it never passes on (the instrument's control, ranked
so, spent its 36 layers on stage 3 and missed 0.99). The difference of carried errors (output less input)
ranks badly: a layer can damp or amplify the noise it receives, so an upsampling path that
rounds at every step scored nothing. Layers are named by PyTorch module path through the
export's layer map, so the manifest lists the kept layers as users know them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.accuracy_control import (
    ControlResult,
    Measured,
    Ranked,
    agreement,
    keep_float_until,
    reference_labels,
)
from evit_deploy.tflite.cut import CutError, cut, dequantised, is_constant, quantised
from evit_deploy.tflite.graph import QUANT_OPS, Graph, op_is_int8
from evit_deploy.tflite.layer_map import tflite_layer_map
from evit_deploy.tflite.logs import native_logs_quiet
from evit_deploy.tflite.ranges import read_through

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from evit_deploy.tflite.quantize import Int8Plan


@dataclass(frozen=True)
class Layer:
    """A quantised op of the float graph: its PyTorch name, its output tensor, and the output
    tensors of the ops that go float with it (itself and the readers of its output).

    Keeping an op float alone would keep little: its int8 readers would round its output again,
    so only its weights' rounding would go. With its readers float too, its output is never
    rounded; the rounding moves to the readers' outputs, whose ranges are set by other values.
    """

    name: str
    tensor: str
    selects: tuple[str, ...]


def _interpreter(content: bytes, threads: int | None, preserve: bool = False) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # built-in kernels when every tensor is kept: XNNPACK keeps its partitions' tensors to itself
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if preserve else OpResolverType.AUTO
    with native_logs_quiet():
        interpreter = Interpreter(model_content=content, num_threads=threads, experimental_op_resolver_type=resolver,
                                  experimental_preserve_all_tensors=preserve)
        interpreter.allocate_tensors()
    return interpreter


def _run(interpreter: Any, image: np.ndarray) -> None:
    (detail,) = interpreter.get_input_details()[:1]
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(image, dtype=np.float32))
    interpreter.invoke()


def quantised_layers(plan: Int8Plan, quantized: bytes, model: torch.nn.Module) -> list[Layer]:
    """The ops plain int8 quantises, named by the deepest PyTorch module whose output they make
    (a torch building block such as ``...inverted_conv.conv`` where the model's own module ends
    later, after a float activation; the tensor's own name where no module ends there)."""
    done = Graph(quantized)
    int8_names = {done.tensor_name(op["outputs"][0]) for op in done.ops
                  if op["outputs"] and op["type"] not in QUANT_OPS and op_is_int8(done, op)}
    modules: dict[str, tuple[bool, int, str]] = {}  # the model's own module first, then the deepest
    for entry in tflite_layer_map(plan.marked, model).layers:
        name = plan.graph.tensor_name(int(entry.tensor)) if entry.tensor.isdigit() else entry.tensor
        rank = (not entry.is_torch_primitive, entry.depth, entry.module)
        if rank > modules.get(name, (False, -1, "")):
            modules[name] = rank
    layers, seen = [], set()
    for op in plan.graph.ops:
        if not op["outputs"]:
            continue
        tensor = plan.graph.tensor_name(op["outputs"][0])
        if tensor in int8_names:
            name = modules.get(tensor, (False, 0, tensor))[2]
            name = name if name not in seen else f"{name}:{tensor}"
            seen.add(name)
            readers = plan.graph.consumers.get(op["outputs"][0], [])
            selects = [tensor] + [plan.graph.tensor_name(t) for r in readers for t in plan.graph.ops[r]["outputs"][:1]]
            layers.append(Layer(name, tensor, tuple(dict.fromkeys(selects))))
    return layers


def rank_layers(plan: Int8Plan, quantized: bytes, layers: list[Layer], images: list[np.ndarray],
                threads: int | None) -> list[Ranked]:
    """``layers`` by the error each adds alone (worst first): relative noise power
    ``||int8 - float||^2 / ||float||^2`` of its int8 op run by itself on the float model's
    inputs (quantised as its int8 input tensors are), over ``images``, after the activation
    that alone reads its output, if one does."""
    from ai_edge_litert.tools import flatbuffer_utils

    done = Graph(quantized)
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(quantized))
    index_of = {done.tensor_name(t): t for t in range(len(done.tensors))}
    float_index = {plan.graph.tensor_name(t): t for t in range(len(plan.graph.tensors))}
    cuts: dict[str, tuple[list[int], int, list[str]]] = {}  # layer -> int8 inputs, output, reference names
    for layer in layers:
        output = index_of.get(layer.tensor)
        if output is None or output not in done.producer:
            continue
        op = done.ops[done.producer[output]]
        inputs = [t for t in op["inputs"] if not is_constant(tree, t)]
        # an int8 input made by a QUANTIZE of a float tensor: the reference is that float tensor
        names = [done.tensor_name(done.ops[done.producer[t]]["inputs"][0])
                 if t in done.producer and done.ops[done.producer[t]]["type"] == "QUANTIZE" else done.tensor_name(t)
                 for t in inputs]
        cuts[layer.name] = (inputs, output, names)
    wanted = {n for _, _, names in cuts.values() for n in names} | {layer.tensor for layer in layers}
    reference = _interpreter(plan.marked, threads, preserve=True)
    ref_index = {d["name"]: d["index"] for d in reference.get_tensor_details() if d["name"] in wanted}
    values = []
    for image in images:
        _run(reference, image)
        values.append({name: reference.get_tensor(index).astype(np.float32) for name, index in ref_index.items()})
    del reference
    scores: dict[str, float] = {}
    for layer in layers:
        if layer.name not in cuts or any(n not in ref_index for n in cuts[layer.name][2]) or layer.tensor not in ref_index:
            scores[layer.name] = 0.0  # not measurable alone (an input outside the op): ranked last
            continue
        inputs, output, names = cuts[layer.name]
        try:
            interpreter = _interpreter(cut(tree, inputs, output), threads)
        except CutError:
            scores[layer.name] = 0.0
            continue
        details = interpreter.get_input_details()  # in the order of the cut's inputs
        seen = read_through(plan.graph, float_index[layer.tensor]).f
        noise = power = 0.0
        for value in values:
            for detail, name in zip(details, names):
                interpreter.set_tensor(detail["index"], quantised(value[name].reshape(detail["shape"]), detail))
            interpreter.invoke()
            (out,) = interpreter.get_output_details()
            ref = seen(value[layer.tensor])
            got = seen(dequantised(interpreter.get_tensor(out["index"]), out).reshape(ref.shape))
            noise += float(np.sum((got - ref) ** 2))
            power += float(np.sum(ref ** 2))
        scores[layer.name] = noise / power if power else 0.0
    return sorted((Ranked(layer.name, scores[layer.name]) for layer in layers), key=lambda r: -r.score)


def control_int8(plan: Int8Plan, ranges: dict[str, Any], model: torch.nn.Module, *, target: float,
                 ranking_images: list[np.ndarray], held_out: list[np.ndarray], held_out_nchw: list[np.ndarray],
                 class_axis: int, max_float_share: float, threads: int | None,
                 progress: Any) -> tuple[ControlResult[bytes], float]:
    """The int8 model with the fewest worst layers float that agrees with PyTorch on ``held_out``
    to ``target``, and the plain int8 model's agreement.

    ``held_out`` is in the artifact's layout, ``held_out_nchw`` the same images for PyTorch;
    ``class_axis``: where the artifact's output holds the classes.
    """
    progress("accuracy control: PyTorch on the held-out images")
    labels = reference_labels(model, held_out_nchw, 1)
    plain = plan.quantize(ranges)
    layers = quantised_layers(plan, plain, model)
    by_name = {layer.name: layer.selects for layer in layers}
    progress(f"accuracy control: ranking {len(layers)} quantised layers by the noise each adds")
    ranking = rank_layers(plan, plain, layers, ranking_images, threads)

    def quantise(names: list[str]) -> bytes:
        return plain if not names else plan.quantize(ranges, [t for n in names for t in by_name[n]])

    def measure(content: bytes) -> Measured:
        interpreter = _interpreter(content, threads)
        (out,) = interpreter.get_output_details()[:1]
        seconds, predicted = 0.0, []
        for image in held_out:
            started = time.perf_counter()
            _run(interpreter, image)
            seconds += time.perf_counter() - started
            predicted.append(interpreter.get_tensor(out["index"]).argmax(axis=class_axis))
        return agreement(predicted, labels), {"ms_per_image": round(1000 * seconds / len(held_out), 1)}

    result = keep_float_until(ranking, quantise, measure, target,
                              max_kept=int(max_float_share * len(ranking)), progress=progress)
    plain_step = next(s for s in result.steps if s.kept == 0)
    return result, plain_step.agreement
