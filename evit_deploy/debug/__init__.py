"""``evit debug``: where an artifact departs from its PyTorch reference, layer by layer.

The layer map (``evit_deploy.layer_map``, filled by each backend at export) says which
artifact tensor is which module's output; a ``capture`` per runtime exposes those tensors (and
runs one layer alone); ``reference`` taps the PyTorch modules; ``engine`` compares them into a
``report``, which ``render`` and ``plot`` show. Nothing here imports torch at module level:
only the reference needs it.
"""
from evit_deploy.debug.engine import THRESHOLDS, debug_artifact
from evit_deploy.debug.report import DebugReport, LayerResult

__all__ = ["THRESHOLDS", "DebugReport", "LayerResult", "debug_artifact"]
