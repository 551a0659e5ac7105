"""Hypothesis strategies for the inputs users hand evit: text, YAML-able data, JSON edits.

Each boundary is tested twice: a bounded number of examples in the default suite (``FAST``) and
many more in the slow suite (``DEEP``, ``@pytest.mark.slow``). Fields that evit knows are drawn
often, so examples reach past "unknown field" into each field's own validation.
"""
from __future__ import annotations

import shutil
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FAST = 60
DEEP = 300
# CLI runs build models and sessions: no per-example deadline, fewer examples
FAST_CLI = 15
DEEP_CLI = 30
QUIET = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}


@contextmanager
def scratch(tmp_path_factory: pytest.TempPathFactory, prefix: str) -> Iterator[Path]:
    """A folder for one Hypothesis example, removed when the example ends.

    The deep suite draws thousands of examples, each copying an artifact: kept until the session
    ends, they filled CI's disk (27 GB from one test) and every later test failed in setup.
    """
    folder = tmp_path_factory.mktemp(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fast(n: int = FAST) -> Any:
    return settings(max_examples=n, **QUIET)


def deep(n: int = DEEP) -> Any:
    return settings(max_examples=n, **QUIET)


# Scalars as YAML and JSON carry them, with the awkward ones made likely.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "0", "-1", "nan", "inf", "1e309", "../..", "/etc/passwd", "~", "$(id)", "a;b", "64x64",
                     "fp16", "int8", "onnx", "trt", "10", "8.5", "yes", "null", "\x00", "é", "\u202e"]),
)


def nested() -> st.SearchStrategy[Any]:
    """Scalars, lists and mappings of them (what ``yaml.safe_load``/``json.load`` can return)."""
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                        max_leaves=12)


def mappings(fields: list[str], max_size: int = 6) -> st.SearchStrategy[dict[Any, Any]]:
    """Mappings whose keys are mostly known ``fields`` (else junk), with values of any shape."""
    keys = st.one_of(st.sampled_from(fields), st.sampled_from(fields), st.text(max_size=10), st.integers())
    return st.dictionaries(keys, nested(), max_size=max_size)


resolution_text = st.one_of(
    st.text(max_size=16),
    st.text(alphabet=string.digits + "xX* -+.,_\t\n٣", max_size=14),
    st.builds(lambda h, w, sep: f"{h}{sep}{w}", st.integers(-100, 10**6), st.integers(-100, 10**6),
              st.sampled_from(["x", "X", "*", " x ", "xx", ",", ""])),
    st.integers(-(10**30), 10**30).map(str),
)
