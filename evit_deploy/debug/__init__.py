"""``evit debug``: where an artifact departs from its PyTorch reference, layer by layer.

``mapping`` records at export time which artifact tensor is which module's output; a
``capture`` per runtime exposes those tensors (and runs one layer alone); ``reference`` taps
the PyTorch modules; ``engine`` compares them into a ``report``, which ``render`` and ``plot``
show. Nothing here imports torch at module level: only the reference needs it.
"""
from evit_deploy.debug.engine import LAYER_MODES, THRESHOLDS, debug_artifact
from evit_deploy.debug.mapping import LayerEntry, LayerMap
from evit_deploy.debug.report import DebugReport, LayerResult

__all__ = ["LAYER_MODES", "THRESHOLDS", "DebugReport", "LayerEntry", "LayerMap", "LayerResult", "debug_artifact"]
