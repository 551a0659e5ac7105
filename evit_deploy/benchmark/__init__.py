"""``evit benchmark``: one matrix to choose an artifact, sharded across machines.

Modules: ``matrix`` (the cells and a shard's slice), ``artifacts`` (reuse or export), ``run`` (export,
verify, eval, profile per cell), ``results`` (rows as data), ``config`` (what shards must share),
``merge`` (shards into one), ``render`` (table cells), ``outputs`` (JSON, CSV, Markdown, JUnit) and
``plots`` (PNGs). A workflow on top of the API, like ``evaluation``.
"""
from __future__ import annotations

from evit_deploy.benchmark.merge import merge_results
from evit_deploy.benchmark.results import BenchmarkResult, Row
from evit_deploy.benchmark.run import run_benchmark

__all__ = ["BenchmarkResult", "Row", "merge_results", "run_benchmark"]
