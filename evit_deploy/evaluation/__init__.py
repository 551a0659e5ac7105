"""Accuracy against ground truth: ``evaluate`` scores an artifact and its PyTorch reference on labelled data.

Modules: ``datasets`` (layouts on disk -> checked samples), ``protocol`` (the official resize /
upsample / argmax), ``metrics`` (confusion-matrix mIoU, top-k), ``evaluate`` (the runners, side by
side), ``render`` (tables), ``plots`` (confusion-matrix PNG). Imports stay light: torch only loads
when a PyTorch reference is built.
"""
from __future__ import annotations

from evit_deploy.evaluation.evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
