"""int8 for TensorRT: a Q/DQ ONNX calibrated here on the CPU (explicit quantisation).

TensorRT 11 has no calibrators, so the quantisation lives in the ONNX: onnxruntime's static
quantisation in QDQ format, with what TensorRT accepts (symmetric int8, zero point 0;
per-channel weights on the output-channel axis; fp32 bias). Only the op types in
``quantize_ops`` get Q/DQ, on their inputs only (Conv by default: where EfficientViT's compute
is; TensorRT fuses DQ -> Conv and keeps the output in float until the next Q), and the fp32
islands (the LiteMLA attention, the resizes) are excluded by node name, so they stay fp32.

Calibration cache: the per-tensor ranges are stored as JSON under
``$EVIT_CALIB_CACHE`` (default ``~/.cache/evit/calib``), named by a sha256 over the
calibration images' bytes, the preprocessing (size, mean, std, colour, resize/crop), the
sample count, the fp32 graph (weights included) and the calibration settings. Any change to
those recalibrates; the same export again reuses the ranges (a ``.meta.json`` beside each
cache file says what it was computed from).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.errors import UsageError

if TYPE_CHECKING:
    import onnx

CACHE_ENV = "EVIT_CALIB_CACHE"


def cache_dir() -> Path:
    """Where calibration caches live: ``$EVIT_CALIB_CACHE`` or ``~/.cache/evit/calib``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "evit" / "calib"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_digests(folder: Path) -> list[list[str]]:
    """[name, sha256] of every image the calibration folder holds, sorted by name."""
    from evit_deploy.data import list_images

    out = []
    for path in list_images(folder):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        out.append([path.name, digest.hexdigest()])
    return out


def cache_key(material: dict[str, Any]) -> str:
    """The cache file's name: sha256 of the canonical JSON of what the ranges depend on."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def quantize_qdq(
    model: onnx.ModelProto,
    calibration: Iterable[np.ndarray] | None,
    *,
    input_name: str,
    exclude: list[str],
    op_types: list[str],
    method: str,
    key_material: dict[str, Any],
    progress: Any = lambda message: None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The Q/DQ model and what the manifest/plan record about its calibration.

    ``calibration`` is re-iterable (images are read from disk one at a time, twice for the
    histogram methods: ``evit_deploy.trt.calibrate``); it may be None only when the cache already
    holds the ranges for ``key_material``. Before calibrating, the memory one image's tensors
    need is checked against what the machine has."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from evit_deploy.memory import require
    from evit_deploy.trt.calibrate import METHODS, required_bytes, stream_ranges

    material = {**key_material, "method": method, "op_types": sorted(op_types), "format": "qdq-int8-symmetric"}
    key = cache_key(material)
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"calibration cache folder {folder} is not writable ({err.strerror}); "
                         f"set {CACHE_ENV} to a writable folder") from None
    cache = folder / f"{key}.json"
    hit = cache.is_file()
    if not hit and calibration is None:
        raise ValueError("no cached ranges and no calibration data")
    known = {n.name for n in model.graph.node}
    excluded = [n for n in exclude if n in known]
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT's "consider pre-processing" chatter
    if hit:
        progress("int8: reusing cached calibration ranges")
    else:
        require(required_bytes(model, list(op_types), method), f"int8 calibration ({method}) of this graph",
                "calibrate at a lower --resolution, use --calib-method minmax, or free memory")
        progress(f"int8: calibrating on {len(calibration or [])} image(s), one at a time")  # type: ignore[arg-type]
        # onnxruntime's calibrators print their progress: keep stdout machine-readable (--json, -q)
        with contextlib.redirect_stdout(io.StringIO()):
            ranges = stream_ranges(model, calibration or [], input_name=input_name, op_types=list(op_types),
                                   method=method, progress=progress)
        save_tensors_data(ranges, cache)
    with tempfile.TemporaryDirectory(prefix="evit-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            model,
            str(out),
            None,  # the ranges are in the cache (computed above, or by an earlier export)
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           # Q/DQ on the inputs (activation, weight) only, as TensorRT places them:
                           # a conv's output stays float until the next quantised input
                           "OpTypesToExcludeOutputQuantization": list(op_types)},
            calibration_cache_path=str(cache),
        )
        quantized = onnx.load(str(out))
    if not hit:
        (folder / f"{key}.meta.json").write_text(json.dumps(material, indent=2) + "\n")
    ops = [n.op_type for n in quantized.graph.node]
    info = {
        "format": "QDQ (onnxruntime quantize_static): int8 symmetric, per-channel weights, fp32 bias, "
                  "Q/DQ on the inputs of the quantised ops only",
        "method": method,
        "op_types": list(op_types),
        "samples": key_material.get("samples"),
        "calibration": "streamed: one image at a time (histogram methods: a range pass, then a count pass)",
        "excluded_nodes": len(excluded),
        "quantize_nodes": ops.count("QuantizeLinear"),
        "dequantize_nodes": ops.count("DequantizeLinear"),
        "cache": str(cache),
        "cache_key": key,
        "cache_hit": hit,
    }
    return quantized, info
