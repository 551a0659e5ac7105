"""Activation ranges for the Q/DQ ONNX, computed one calibration image at a time.

onnxruntime's ``quantize_static`` hands the calibrator every image at once, and its histogram
calibrators (percentile, entropy) keep every intermediate tensor of every image until the
end: seg-B1 at 512x1024 with 64 photos was OOM-killed at 24 GB (issue 14). Here the same
calibrator (same augmented graph, same tensors, same histogram settings) is driven one image
at a time, and the result is *exactly* what the one-shot calibration gives, because:

- min/max (``minmax``): onnxruntime's own calibrator already reduces each image to two
  scalars per tensor; it only needs a reader that loads images lazily.
- histograms (``percentile``, ``entropy``): the one-shot histogram of a tensor spans the range
  of all its values over all images (``np.histogram(all, bins)``, or a fixed ``(-t, t)``). A first
  pass finds that range exactly (min/max reduced inside the graph, per image); a second pass adds
  each image's counts in that range, and counts over fixed edges add up exactly. A run of the
  second pass outputs at most ``GROUP_BYTES`` of tensors (the graph is cut into several runs
  per image where needed), so memory no longer grows with the images nor the tensors kept:
  seg-B1 at 1024x2048 keeps 2.5 GiB of Conv tensors per image.

``required_bytes`` estimates the memory one image's tensors need, so a calibration that cannot
fit is refused in one line before it starts (``evit_deploy.memory``).
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.errors import UsageError

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization.calibrate import CalibraterBase, TensorsData

    from evit_deploy.activation_ranges import Activation

#: evit's method: the onnxruntime calibration method its ranges are recorded as ("mse" computes
#: min/max-like ranges of its own, ``_mse_ranges``, on the tensors onnxruntime's calibrator selects)
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MinMax"}
GROUP_BYTES = 512 * 2**20  # tensors one histogram-pass run outputs at most


class StreamReader:
    """onnxruntime's CalibrationDataReader over a re-iterable of NCHW batches, read lazily."""

    def __init__(self, name: str, images: Iterable[np.ndarray]) -> None:
        self.name = name
        self.images = images
        self._it: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self.images)
        batch = next(self._it, None)
        return None if batch is None else {self.name: np.ascontiguousarray(batch, dtype=np.float32)}

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def rewind(self) -> None:
        self._it = None


def calibrator_for(model: onnx.ModelProto, folder: Path, op_types: list[str], method: str) -> CalibraterBase:
    """The calibrator ``quantize_static`` would build for ``model`` (same preparation, same options)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.quant_utils import (
        save_and_reload_model_with_shape_infer,
        update_opset_version,
    )

    reloaded = save_and_reload_model_with_shape_infer(model)
    updated = update_opset_version(reloaded, QuantType.QInt8, QuantType.QInt8)
    source = copy.deepcopy(updated if updated is not reloaded else model)  # saving moves its weights out
    path = folder / "model_input.onnx"
    onnx.save_model(source, str(path), save_as_external_data=True)
    return create_calibrator(path, op_types, augmented_model_path=str(folder / "augmented_model.onnx"),
                             calibrate_method=getattr(CalibrationMethod, METHODS[method]), extra_options={})


def stream_ranges(model: onnx.ModelProto, images: Iterable[np.ndarray], *, input_name: str, op_types: list[str],
                  method: str, budget: int = GROUP_BYTES,
                  progress: Callable[[str], None] = lambda message: None) -> TensorsData:
    """Per-tensor ranges over ``images`` (re-iterable; read twice for histogram methods). A run of
    the histogram pass outputs at most ``budget`` bytes of tensors (more runs per image if needed)."""
    with tempfile.TemporaryDirectory(prefix="evit-calib-") as tmp:
        calibrator = calibrator_for(model, Path(tmp), op_types, method)
        if method == "minmax":
            progress("int8: min/max ranges, one image at a time")
            calibrator.collect_data(StreamReader(input_name, images))
            return calibrator.compute_data()
        base = _load_inferred(Path(tmp) / "model_input.onnx")
        if method == "mse":
            tensors, _ = calibrator.select_tensors_to_calibrate(calibrator.model)
            return _mse_ranges(_in_order(base, tensors), base, images, input_name, budget, progress)
        return _histogram_ranges(calibrator, base, images, input_name, budget, progress)


def _in_order(base: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    order = {t: i for i, t in enumerate(t for node in base.graph.node for t in (*node.input, *node.output))}
    return sorted(tensors, key=lambda t: order.get(t, -1))


def _histogram_ranges(calibrator: Any, base: onnx.ModelProto, images: Iterable[np.ndarray], input_name: str,
                      budget: int, progress: Callable[[str], None]) -> TensorsData:
    from onnxruntime.quantization.calibrate import HistogramCollector

    tensors = _in_order(base, calibrator.tensors_to_calibrate)
    symmetric = calibrator.symmetric and calibrator.method == "percentile"  # as HistogramCollector.collect
    low, high, edges = _ranges(base, tensors, images, input_name, symmetric, progress)
    counts: dict[str, Any] = {}
    bin_edges: dict[str, Any] = {}
    for name, flat in _values(base, tensors, images, input_name, budget, progress):
        hist, bin_edges[name] = np.histogram(np.absolute(flat) if symmetric else flat,
                                             calibrator.num_bins, range=edges[name])
        counts[name] = hist if name not in counts else counts[name] + hist
    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    for name in tensors:
        entry = (counts[name], bin_edges[name].astype(np.asarray(low[name]).dtype), low[name], high[name])
        collector.histogram_dict[name] = entry if symmetric else (*entry, edges[name][1])
    calibrator.collector = collector
    return calibrator.compute_data()


def _mse_ranges(tensors: list[str], base: onnx.ModelProto, images: Iterable[np.ndarray], input_name: str,
                budget: int, progress: Callable[[str], None]) -> TensorsData:
    """Each tensor's range of least expected int8 error (``evit_deploy.activation_ranges``), the
    error taken after the activation that alone reads it: the same rule as TFLite's ``mse``."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

    from evit_deploy.activation_ranges import Histogram

    low, high, _ = _ranges(base, tensors, images, input_name, False, progress)
    histograms = {name: Histogram(float(low[name]), float(high[name])) for name in tensors}
    for name, flat in _values(base, tensors, images, input_name, budget, progress):
        histograms[name].add(flat)
    chosen = {}
    for name in tensors:
        lo, hi = histograms[name].mse_range(then=read_through(base, name))
        chosen[name] = (np.float32(lo), np.float32(hi))
    return TensorsData(CalibrationMethod.MinMax, chosen)


def read_through(model: onnx.ModelProto, tensor: str) -> Activation:
    """The activation ``tensor``'s readers compute from it alone, or the identity: a HardSwish,
    whole or as evit's int8 form (``x + 3`` and ``x * that``, ``evit_deploy.onnx.hardswish``), or a Relu."""
    from evit_deploy.activation_ranges import HARDSWISH, IDENTITY, RELU
    from evit_deploy.onnx.hardswish import THREE

    readers = [node for node in model.graph.node if tensor in node.input]
    kinds = sorted(node.op_type for node in readers)
    if kinds == ["HardSwish"]:
        return HARDSWISH
    if kinds == ["Relu"]:
        return RELU
    if kinds == ["Add", "Mul"]:
        add, mul = sorted(readers, key=lambda n: n.op_type)
        plus3 = add.output[0]
        if THREE in add.input and set(mul.input) == {tensor} | _clipped(model, plus3):
            return HARDSWISH
    return IDENTITY


def _clipped(model: onnx.ModelProto, tensor: str) -> set[str]:
    """The outputs of the Clips that read ``tensor``."""
    return {node.output[0] for node in model.graph.node if node.op_type == "Clip" and node.input[0] == tensor}


def _values(base: onnx.ModelProto, tensors: list[str], images: Iterable[np.ndarray], input_name: str, budget: int,
            progress: Callable[[str], None]) -> Iterator[tuple[str, np.ndarray]]:
    """Pass 2: every tensor's values on each image, flat, at most ``budget`` bytes of them per run."""
    groups = _groups(base, tensors, images, input_name, budget)
    sessions = [_session(_extract(base, input_name, group)) for group in groups]
    for index, batch in enumerate(images):
        progress(f"int8: histograms, image {index + 1}" + (f" ({len(groups)} runs each)" if len(groups) > 1 else ""))
        feed = {input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        for group, session in zip(groups, sessions):
            for name, values in zip(group, session.run(group, feed)):
                flat = values.reshape(-1)
                if not np.isfinite(flat).all():
                    raise UsageError(_NONFINITE)
                yield name, flat


_NONFINITE = "a calibration image drives an activation to NaN or Inf; check the weights and the images"


def _ranges(base: onnx.ModelProto, tensors: list[str], images: Iterable[np.ndarray], input_name: str,
            symmetric: bool, progress: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Pass 1: every tensor's exact min and max (and of |x| for symmetric histograms), reduced inside
    the graph so a run holds no more than one inference's activations; then the histogram edges
    the one-shot calibration would use."""
    import onnx
    from onnx import helper

    types = {v.name: v.type.tensor_type.elem_type for v in [*base.graph.value_info, *base.graph.input]}
    reduced = onnx.ModelProto()
    reduced.CopyFrom(base)
    outputs: dict[str, list[str]] = {}
    reductions: dict[str, list[onnx.NodeProto]] = {}  # tensor -> the nodes that reduce it
    for index, name in enumerate(tensors):
        sources = [(name, "")] + ([(f"evit_abs_{index}", "|abs|")] if symmetric else [])
        nodes = [helper.make_node("Abs", [name], [f"evit_abs_{index}"])] if symmetric else []
        for source, tag in sources:
            for op in ("ReduceMin", "ReduceMax"):
                out = f"evit_{op}_{index}{tag and '_abs'}"
                nodes.append(helper.make_node(op, [source], [out], keepdims=0))
                reduced.graph.output.append(helper.make_tensor_value_info(out, types.get(name, 1), []))
                outputs.setdefault(name + tag, []).append(out)
        reductions[name] = nodes
    # each reduction right after the node that writes its tensor, and only the reductions as outputs,
    # in graph order: onnxruntime then reduces a tensor as soon as it exists and frees it, instead of
    # keeping every tensor to the end of the run for reductions scheduled after the model's output
    order = [n for graph_input in base.graph.input for n in reductions.get(graph_input.name, [])]
    for node in base.graph.node:
        order += [node, *(n for out in node.output for n in reductions.get(out, []))]
    del reduced.graph.node[:]
    reduced.graph.node.extend(order)
    kept = [o for o in reduced.graph.output if o.name.startswith("evit_")]
    del reduced.graph.output[:]
    reduced.graph.output.extend(kept)
    session = _session(reduced)
    wanted = [o for pair in outputs.values() for o in pair]
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    for index, batch in enumerate(images):
        progress(f"int8: ranges, image {index + 1}")
        found = dict(zip(wanted, session.run(wanted, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})))
        for key, (lo_name, hi_name) in outputs.items():
            lo, hi = found[lo_name][()], found[hi_name][()]
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise UsageError(_NONFINITE)
            low[key] = lo if key not in low else min(low[key], lo)
            high[key] = hi if key not in high else max(high[key], hi)
    edges: dict[str, tuple[Any, Any]] = {}
    for name in tensors:
        if symmetric:  # np.histogram(|all|, bins): edges over [min |x|, max |x|]
            edges[name] = (low[name + "|abs|"], high[name + "|abs|"])
        else:  # np.histogram(all, bins, range=(-t, t)), t = max(|min|, |max|) in the tensor's dtype
            threshold = np.array(max(abs(low[name]), abs(high[name])), dtype=np.asarray(low[name]).dtype)
            edges[name] = (-threshold, threshold)
    return low, high, edges


def _groups(base: onnx.ModelProto, tensors: list[str], images: Iterable[np.ndarray], input_name: str,
            budget: int) -> list[list[str]]:
    """``tensors`` in graph order, cut into runs of at most ``budget`` bytes (at least one tensor each)."""
    shape = next(iter(images)).shape
    sizes = _sizes(base, input_name, shape)
    groups: list[list[str]] = [[]]
    total = 0
    for name in tensors:
        size = sizes.get(name, 0)
        if groups[-1] and total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return groups


def _sizes(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes of every tensor for an input of ``shape`` (a dynamic graph is sized at that shape)."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if value.name == input_name:
            for dim, size in zip(value.type.tensor_type.shape.dim, shape):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(fixed)
    return {v.name: _nbytes(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


def _extract(model: onnx.ModelProto, input_name: str, outputs: list[str]) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` (nodes after them are not run)."""
    import onnx

    return onnx.utils.Extractor(model).extract_model([input_name], outputs)


def _session(model: onnx.ModelProto) -> Any:
    """As onnxruntime's calibrators run (no graph optimisation, CPU), so values match theirs bit for
    bit; without the memory arena, so a run's outputs are freed when it returns."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _load_inferred(path: Path) -> onnx.ModelProto:
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    return load_model_with_shape_infer(path)


def required_bytes(model: onnx.ModelProto, op_types: list[str], method: str, budget: int = GROUP_BYTES) -> int:
    """Memory calibrating ``model`` (at its own input shape) needs beyond what the process holds.

    Histogram methods: a run of the count pass holds up to ``budget`` bytes of tensors twice
    (onnxruntime's buffers and the arrays ``run`` returns), besides one inference's tensors in
    flight. min/max: onnxruntime reduces each tensor inside the graph, so about one inference's
    largest tensors in flight. Both: the weights, in the calibrator's and the run's sessions."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {v.name: _nbytes(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    initializers = {i.name for i in model.graph.initializer}
    calibrated = {t for node in model.graph.node if node.op_type in op_types
                  for t in (*node.input, *node.output) if t in sizes and t not in initializers}
    in_flight = 4 * max(sizes.values(), default=0)
    weights = 2 * sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer)
    if method == "minmax":
        return in_flight + weights
    return 2 * min(sum(sizes[t] for t in calibrated), budget) + in_flight + weights


def _nbytes(value: Any) -> int:
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
    itemsize = {1: 4, 10: 2, 11: 8, 7: 8, 6: 4}.get(value.type.tensor_type.elem_type, 4)
    return int(np.prod(dims)) * itemsize if dims else itemsize
