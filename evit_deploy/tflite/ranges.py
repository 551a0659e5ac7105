"""MSE-clipped activation ranges for TFLite int8 (``int8_ranges: mse``), one image at a time.

The min/max calibration (``quantize._calibrate``) gives each tensor's extremes; this second
pass histograms every calibrated activation between them and narrows each range to the one
with the least expected int8 error (``evit_deploy.activation_ranges``), measured after the
activation op when one (HARD_SWISH, GELU, RELU) is the tensor's only reader.

Memory stays bounded as in the min/max pass (issue 14): the float model is run with a group of
activations made graph outputs (the only tensors an interpreter keeps after a run), at most
``GROUP_BYTES`` of them per group, so one image's tensors are never all alive at once; the
counts of image after image and group after group add up exactly.

Time is bounded too: the histograms take at most ``HISTOGRAM_IMAGES`` images, evenly spaced
over the calibration set. Each image costs one float inference per group, and at 1024x2048 with
64 images the pass over all of them made the export take 23 minutes here (11 with the cap).
The extremes the histograms span still come from every image (the min/max pass); the shape
between them needs values, not images, and 32 images give each tensor of a 512x1024 graph
millions of them (the benchmarks' 21-28 images are under the cap, so their figures are those
of every image).
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from evit_deploy.activation_ranges import GELU, HARDSWISH, IDENTITY, RELU, Activation, Histogram
from evit_deploy.contracts import Images
from evit_deploy.tflite.graph import Graph
from evit_deploy.tflite.logs import native_logs_quiet

GROUP_BYTES = 512 * 2**20  # activations one histogram run outputs at most
HISTOGRAM_IMAGES = 32  # calibration images the histograms take at most
ACTIVATIONS = {"HARD_SWISH": HARDSWISH, "GELU": GELU, "RELU": RELU}


def mse_ranges(model: bytes, ranges: dict[str, Any], calibration: Images,
               progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """``ranges`` (ai-edge-quantizer's min/max per tensor name) with every activation's range
    narrowed to its MSE-optimal one over ``calibration`` (in the model's layout; every k-th
    image when there are more than ``HISTOGRAM_IMAGES``)."""
    graph = Graph(model)
    sizes = dict(zip(graph.producer, graph.activation_sizes()))
    index = {graph.tensor_name(t): t for t in graph.producer}
    histograms = {name: Histogram(float(np.min(r["min"])), float(np.max(r["max"])))
                  for name, r in ranges.items() if name in index and np.max(r["max"]) > np.min(r["min"])}
    groups = _groups([index[name] for name in histograms], sizes)
    every = max(1, -(-len(calibration) // HISTOGRAM_IMAGES))
    images = -(-len(calibration) // every)
    progress(f"choosing MSE int8 ranges for {len(histograms)} activations from {images} of {len(calibration)} "
             f"image(s) ({len(groups)} run(s) an image)")
    for group in groups:
        interpreter = _with_outputs(graph, group)
        (entry,) = interpreter.get_input_details()[:1]
        for image in itertools.islice(calibration, 0, None, every):
            interpreter.set_tensor(entry["index"], np.ascontiguousarray(image, dtype=np.float32))
            interpreter.invoke()
            for detail in interpreter.get_output_details():
                histograms[graph.tensor_name(detail["index"])].add(interpreter.get_tensor(detail["index"]))
        del interpreter
    narrowed = dict(ranges)
    for name, histogram in histograms.items():
        low, high = histogram.mse_range(then=read_through(graph, index[name]))
        old = ranges[name]
        narrowed[name] = {**old, "min": np.full_like(old["min"], low), "max": np.full_like(old["max"], high)}
    return narrowed


def read_through(graph: Graph, tensor: int) -> Activation:
    """The activation every reader of ``tensor`` is (float or int8, it reads the int8 values),
    else the identity: a tensor a conv or an add also reads must stay exact for them."""
    readers = {graph.ops[i]["type"] for i in graph.consumers.get(tensor, [])}
    if tensor in graph.outputs or len(readers) != 1:
        return IDENTITY
    return ACTIVATIONS.get(readers.pop(), IDENTITY)


def group_bytes(model: bytes) -> int:
    """Memory one histogram run adds to one inference's: the activations it outputs at once."""
    sizes = Graph(model).activation_sizes()
    return min(sum(sizes), max([GROUP_BYTES, *sizes]))


def _groups(tensors: list[int], sizes: dict[int, int]) -> list[list[int]]:
    """``tensors`` in runs of at most ``GROUP_BYTES`` (a larger tensor runs alone)."""
    groups: list[list[int]] = [[]]
    used = 0
    for tensor in tensors:
        if groups[-1] and used + sizes[tensor] > GROUP_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(tensor)
        used += sizes[tensor]
    return [g for g in groups if g]


def _with_outputs(graph: Graph, tensors: list[int]) -> Any:
    """An interpreter of the graph's model whose outputs are ``tensors`` (signatures dropped:
    they name the model's own outputs)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = graph.model
    subgraph = model.subgraphs[0]
    whole = (subgraph.outputs, model.signatureDefs)
    try:
        subgraph.outputs = np.array(tensors, dtype=np.int32)
        model.signatureDefs = []
        content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    finally:
        subgraph.outputs, model.signatureDefs = whole
    with native_logs_quiet():
        interpreter = Interpreter(model_content=content, num_threads=max(1, os.cpu_count() or 1))
        interpreter.allocate_tensors()
    return interpreter
