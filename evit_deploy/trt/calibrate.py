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
  pass finds that range exactly (running min/max); a second pass adds each image's counts in
  that range, and counts over fixed edges add up exactly. Twice the inference, a fraction of
  the memory: one image's tensors at a time.

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

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


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
                  method: str, progress: Callable[[str], None] = lambda message: None) -> TensorsData:
    """Per-tensor ranges over ``images`` (re-iterable; read twice for histogram methods)."""
    with tempfile.TemporaryDirectory(prefix="evit-calib-") as tmp:
        calibrator = calibrator_for(model, Path(tmp), op_types, method)
        if method == "minmax":
            progress("int8: min/max ranges, one image at a time")
            calibrator.collect_data(StreamReader(input_name, images))
            return calibrator.compute_data()
        return _histogram_ranges(calibrator, images, input_name, progress)


def _histogram_ranges(calibrator: Any, images: Iterable[np.ndarray], input_name: str,
                      progress: Callable[[str], None]) -> TensorsData:
    from onnxruntime.quantization.calibrate import HistogramCollector

    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    wanted = [(i, n) for i, n in enumerate(names) if n in calibrator.tensors_to_calibrate]
    symmetric = calibrator.symmetric and calibrator.method == "percentile"  # as HistogramCollector.collect
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    for index, outputs in enumerate(_run(session, images, input_name)):  # pass 1: the exact ranges
        progress(f"int8: ranges, image {index + 1}")
        for i, name in wanted:
            values = outputs[i].reshape(-1)
            _fold(low, high, name, *_extremes(values))
            if symmetric:
                magnitude = np.absolute(values)
                _fold(low, high, name + "|abs|", magnitude.min(), magnitude.max())
    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    edges: dict[str, tuple[Any, Any]] = {}
    for _i, name in wanted:
        if symmetric:  # np.histogram(|all|, bins): edges over [min |x|, max |x|]
            edges[name] = (low[name + "|abs|"], high[name + "|abs|"])
        else:  # np.histogram(all, bins, range=(-t, t)), t = max(|min|, |max|) in the tensor's dtype
            threshold = np.array(max(abs(low[name]), abs(high[name])), dtype=np.asarray(low[name]).dtype)
            edges[name] = (-threshold, threshold)
    counts: dict[str, Any] = {}
    bin_edges: dict[str, Any] = {}
    for index, outputs in enumerate(_run(session, images, input_name)):  # pass 2: counts in those ranges
        progress(f"int8: histograms, image {index + 1}")
        for i, name in wanted:
            values = outputs[i].reshape(-1)
            if symmetric:
                values = np.absolute(values)
            hist, bin_edges[name] = np.histogram(values, calibrator.num_bins, range=edges[name])
            counts[name] = hist if name not in counts else counts[name] + hist
    for _i, name in wanted:
        entry = (counts[name], bin_edges[name].astype(np.asarray(low[name]).dtype), low[name], high[name])
        collector.histogram_dict[name] = entry if symmetric else (*entry, edges[name][1])
    calibrator.collector = collector
    return calibrator.compute_data()


def _run(session: Any, images: Iterable[np.ndarray], input_name: str) -> Iterator[list[np.ndarray]]:
    for batch in images:
        yield session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})


def _extremes(values: np.ndarray) -> tuple[Any, Any]:
    if values.size == 0:
        zero = np.array(0, dtype=values.dtype)
        return zero, zero
    if not np.isfinite(values).all():
        raise UsageError("a calibration image drives an activation to NaN or Inf; check the weights and the images")
    return values.min(), values.max()


def _fold(low: dict[str, Any], high: dict[str, Any], name: str, lo: Any, hi: Any) -> None:
    low[name] = lo if name not in low else min(low[name], lo)
    high[name] = hi if name not in high else max(high[name], hi)


def required_bytes(model: onnx.ModelProto, op_types: list[str], method: str) -> int:
    """Memory one calibration image's tensors take while ranges are collected.

    Histogram methods: every input and output of the calibrated ops stays alive to the end of a
    run (they are graph outputs of the augmented model), once in onnxruntime's arena and once as
    the numpy arrays ``run`` returns. min/max: onnxruntime reduces them inside the graph, so
    about one run's activations."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {v.name: _nbytes(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    initializers = {i.name for i in model.graph.initializer}
    calibrated = {t for node in model.graph.node if node.op_type in op_types
                  for t in (*node.input, *node.output) if t in sizes and t not in initializers}
    tensors = sum(sizes[t] for t in calibrated)
    weights = sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer)
    return (tensors if method == "minmax" else 2 * tensors) + 2 * weights


def _nbytes(value: Any) -> int:
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
    itemsize = {1: 4, 10: 2, 11: 8, 7: 8, 6: 4}.get(value.type.tensor_type.elem_type, 4)
    return int(np.prod(dims)) * itemsize if dims else itemsize
