"""Weight compression (palettisation, int8) that leaves the exact bicubic filter banks alone."""
from __future__ import annotations

from typing import Any

import numpy as np

from evit_deploy.coreml.options import GROUPED_PALETTE_MIN, PALETTE_GROUP


def kmeans_lut(nbits: int) -> Any:
    """A palettizer ``lut_function``: exact 1-D k-means (coremltools' bundled kmeans1d), no scikit-learn."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    def lut_function(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lut, indices = _get_kmeans_lookup_table_and_weight(nbits, weight, force_kmeans1d=True)
        return np.asarray(lut).astype(weight.dtype), np.asarray(indices).astype(np.uint8)

    return lut_function


def bicubic_convs(mlmodel: Any) -> list[str]:
    """Names of conv ops whose weights are a ``BicubicUpsample`` filter bank (kept uncompressed)."""
    from evit_deploy.convert.bicubic import BicubicUpsample

    banks: dict[int, np.ndarray] = {}
    names = []
    for op in mlmodel._mil_program.functions["main"].operations:
        if op.op_type != "conv":
            continue
        weight = op.weight.val
        if weight is None or weight.ndim != 4 or weight.shape[1:] != (1, 5, 5):
            continue
        for factor in (2, 3, 4, 8):
            bank = banks.setdefault(factor, BicubicUpsample(factor).kernel.numpy())
            if weight.shape[0] % bank.shape[0] == 0 and np.allclose(
                    weight.astype(np.float32), np.tile(bank, (weight.shape[0] // bank.shape[0], 1, 1, 1)), atol=1e-3):
                names.append(op.name)
                break
    return names


def compress(ct: Any, mlmodel: Any, how: str, level: int) -> tuple[Any, dict[str, Any]]:
    from coremltools.optimize import coreml as cto

    exclude = bicubic_convs(mlmodel)
    if how.startswith("palettize"):
        nbits = int(how.removeprefix("palettize"))
        grouped = level >= GROUPED_PALETTE_MIN
        config = cto.OpPalettizerConfig(
            mode="custom", lut_function=kmeans_lut(nbits),
            granularity="per_grouped_channel" if grouped else "per_tensor", group_size=PALETTE_GROUP,
        )
        summary = {"method": "palettize", "nbits": nbits, "clustering": "k-means (1-D, exact)",
                   "granularity": f"per_grouped_channel ({PALETTE_GROUP} channels)" if grouped else "per_tensor"}
        compressed = cto.palettize_weights(
            mlmodel, cto.OptimizationConfig(global_config=config, op_name_configs={n: None for n in exclude}))
    else:
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        summary = {"method": "linear_quantize_weights", "dtype": "int8", "mode": "linear_symmetric",
                   "granularity": "per_channel"}
        compressed = cto.linear_quantize_weights(
            mlmodel, cto.OptimizationConfig(global_config=config, op_name_configs={n: None for n in exclude}))
    summary["weight_threshold"] = "tensors over 2048 elements"
    summary["uncompressed_bicubic_convs"] = len(exclude)
    return compressed, summary
