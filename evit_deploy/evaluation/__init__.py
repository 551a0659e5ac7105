"""Accuracy against ground truth: ``evaluate`` scores an artifact and its PyTorch reference on labelled data.

Modules: ``evaluate`` (the runners, side by side), ``render`` (tables), ``plots`` (confusion-matrix
PNG). The datasets, protocol and metrics are ``evit_deploy.labelled``'s, one floor down, where int8
accuracy control (``export --max-drop``) scores with them too. Imports stay light: torch only loads
when a PyTorch reference is built.
"""
from __future__ import annotations

from evit_deploy.evaluation.evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
