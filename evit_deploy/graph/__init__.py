"""ONNX graph passes: fp32 islands and the mixed-precision (fp16) rewrite.

Used by the ONNX target (``--precision fp16``) and the TensorRT target (the strongly typed
fp16 ONNX, and the node names a legacy ``trtexec --layerPrecisions`` list must keep in fp32):

    islands = find_fp32_islands(model)          # LiteMLA attention, LayerNorms, Resize: from structure
    fp16 = to_mixed_fp16(model, islands)        # fp16 graph, fp32 islands behind Casts
    plan = islands_summary(islands)             # [{kind, nodes, reason, eps?}, ...]

Island node names are the model's own node names; nodes without a name get the deterministic
names of ``node_names`` (``to_mixed_fp16`` writes them into its output; call ``name_nodes`` on
an fp32 model before saving it for a legacy ``--layerPrecisions`` build). ``compute_dtypes``
reads back which type every node computes in, to check a rewritten graph.
"""
from __future__ import annotations

from ._graph import name_nodes, node_names
from .fp16 import compute_dtypes, to_full_fp16, to_mixed_fp16
from .islands import ISLAND_KINDS, Island, find_fp32_islands, islands_summary, select_islands

__all__ = [
    "ISLAND_KINDS",
    "Island",
    "compute_dtypes",
    "find_fp32_islands",
    "islands_summary",
    "name_nodes",
    "node_names",
    "select_islands",
    "to_full_fp16",
    "to_mixed_fp16",
]
