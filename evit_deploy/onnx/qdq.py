"""int8 as a Q/DQ ONNX calibrated here on the CPU: the one quantiser TensorRT and ONNX Runtime share.

onnxruntime's static quantisation (``quantize_static``), fed with ranges from the streamed,
memory-checked calibrator (``evit_deploy.onnx.calibrate``) through a calibration cache. What the
two runtimes want differs only in a few settings, so each names a ``QdqScheme``:

- ``TENSORRT``: QDQ, symmetric int8 activations (zero point 0), per-channel symmetric weights,
  fp32 bias, and Q/DQ on the *inputs* of the quantised ops only: TensorRT fuses DQ -> Conv and
  keeps the output in float until the next quantised input (``evit_deploy.trt.int8``).
- ``ORT_SCHEMES``: what ONNX Runtime's CPU kernels run fastest (``evit_deploy.onnx.int8`` says
  which was measured fastest and by how much). Outputs are quantised too, so ORT fuses
  DQ -> Conv -> Q into one QLinearConv, and biases are int32 as QLinearConv takes them.

Ops outside ``op_types`` and the nodes named in ``exclude`` (the fp32 islands: LiteMLA attention,
resizes; nodes a user keeps float) get no Q/DQ and compute in float.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from evit_deploy.errors import UsageError

if TYPE_CHECKING:
    import onnx

    from evit_deploy.configs import Recipe
    from evit_deploy.spec import InputSpec

CACHE_ENV = "EVIT_CALIB_CACHE"


@dataclass(frozen=True)
class QdqScheme:
    """How a runtime wants its int8 graph; ``name`` goes into the cache key and the manifest."""

    name: str
    description: str
    ranges: str  # the cache key's part: schemes that calibrate the same tensors share their ranges
    quant_format: Literal["QDQ", "QOperator"] = "QDQ"
    activations: Literal["QInt8", "QUInt8"] = "QInt8"
    weights: Literal["QInt8", "QUInt8"] = "QInt8"
    activation_symmetric: bool = True
    quantize_outputs: bool = False  # False: Q/DQ on the quantised ops' inputs only
    quantize_bias: bool = False

    def extra_options(self, op_types: list[str]) -> dict[str, Any]:
        options: dict[str, Any] = {"ActivationSymmetric": self.activation_symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": self.quantize_bias}
        if not self.quantize_outputs:
            options["OpTypesToExcludeOutputQuantization"] = list(op_types)
        return options


TENSORRT = QdqScheme(
    "qdq-int8-symmetric",
    "QDQ (onnxruntime quantize_static): int8 symmetric, per-channel weights, fp32 bias, "
    "Q/DQ on the inputs of the quantised ops only", ranges="qdq-int8-symmetric")
ORT_SCHEMES = {
    "qdq-u8s8": QdqScheme("qdq-u8s8", "QDQ: uint8 asymmetric activations, int8 symmetric per-channel weights, "
                          "int32 bias, outputs quantised (ORT fuses DQ -> Conv -> Q into QLinearConv)", "ort-cpu",
                          activations="QUInt8", activation_symmetric=False, quantize_outputs=True,
                          quantize_bias=True),
    "qdq-s8s8": QdqScheme("qdq-s8s8", "QDQ: int8 asymmetric activations, int8 symmetric per-channel weights, "
                          "int32 bias, outputs quantised (ORT fuses DQ -> Conv -> Q into QLinearConv)", "ort-cpu",
                          activations="QInt8", activation_symmetric=False, quantize_outputs=True,
                          quantize_bias=True),
    # uint8 weights: ORT's u8u8 kernels widen to 16 bits before multiplying, where u8s8 on x86 CPUs
    # without VNNI (AVX2 only: AMD Zen 2/3, Intel before Cascade Lake) adds pairs of u8 x s8 products
    # in 16 bits with saturation (VPMADDUBSW) and clips large sums
    "qdq-u8u8": QdqScheme("qdq-u8u8", "QDQ: uint8 asymmetric activations, uint8 symmetric per-channel weights "
                          "(zero point 128), int32 bias, outputs quantised (ORT fuses DQ -> Conv -> Q into "
                          "QLinearConv; no 16-bit saturation on CPUs without VNNI)", "ort-cpu",
                          activations="QUInt8", weights="QUInt8", activation_symmetric=False, quantize_outputs=True,
                          quantize_bias=True),
    "qoperator-u8s8": QdqScheme("qoperator-u8s8", "QOperator: QLinearConv written out, uint8 asymmetric "
                                "activations, int8 symmetric per-channel weights, int32 bias", "ort-cpu",
                                quant_format="QOperator", activations="QUInt8", activation_symmetric=False,
                                quantize_outputs=True, quantize_bias=True),
}


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


def key_material(graph: onnx.ModelProto, spec: InputSpec, recipe: Recipe) -> dict[str, Any]:
    """What the calibration ranges of ``graph`` depend on besides the method and the ops."""
    one = spec.with_resolution(spec.height, spec.width, batch=1)
    return {
        "images": image_digests(Path(str(recipe.calibration.source))),
        "samples": recipe.calibration.samples,
        "preprocessing": {"size": [one.height, one.width], "mean": list(one.mean), "std": list(one.std),
                          "color": one.color, "crop_ratio": one.extra.get("crop_ratio"),
                          "resize": "bicubic, shorter side + centre crop" if one.extra.get("crop_ratio")
                          else "bicubic to size"},
        "model": sha256_bytes(graph.SerializeToString()),
    }


def quantize_qdq(
    model: onnx.ModelProto,
    calibration: Iterable[np.ndarray] | None,
    *,
    input_name: str,
    exclude: list[str],
    op_types: list[str],
    method: str,
    key_material: dict[str, Any],
    scheme: QdqScheme = TENSORRT,
    progress: Any = lambda message: None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The Q/DQ model and what the manifest/plan record about its calibration.

    ``calibration`` is re-iterable (images are read from disk one at a time, twice for the
    histogram methods: ``evit_deploy.onnx.calibrate``); it may be None only when the cache already
    holds the ranges for ``key_material``. Before calibrating, the memory one image's tensors
    need is checked against what the machine has."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from evit_deploy.memory import require
    from evit_deploy.onnx.calibrate import METHODS, required_bytes, stream_ranges

    material = {**key_material, "method": method, "op_types": sorted(op_types), "format": scheme.ranges}
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
            quant_format=getattr(QuantFormat, scheme.quant_format),
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=getattr(QuantType, scheme.activations),
            weight_type=getattr(QuantType, scheme.weights),
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            extra_options=scheme.extra_options(op_types),
            calibration_cache_path=str(cache),
        )
        quantized = onnx.load(str(out))
    if not hit:
        (folder / f"{key}.meta.json").write_text(json.dumps(material, indent=2) + "\n")
    ops = [n.op_type for n in quantized.graph.node]
    info = {
        "format": scheme.description,
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
