"""coremltools' protobuf classes, loaded without importing coremltools itself.

``import coremltools`` pulls in its converters and, where PyTorch is installed, PyTorch: seconds
of start-up and a process that no longer measures the runtime alone. Reading an ML program
only needs the generated ``*_pb2`` modules, which depend on nothing but ``protobuf``; they are
loaded here as a private package. When coremltools is already imported its own modules are
reused (the descriptors are the same, so either set of classes parses any model).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Any

from evit_deploy.errors import RuntimeMissing

INSTALL_HINT = "pip install 'evit-deploy[coreml]'"
_PRIVATE = "evit_deploy.mil._coremltools_proto"


@lru_cache(maxsize=1)
def model_pb2() -> Any:
    """The ``Model_pb2`` module (``Model``, with ``mlProgram`` and the MIL messages)."""
    if "coremltools.proto.Model_pb2" in sys.modules:
        return sys.modules["coremltools.proto.Model_pb2"]
    spec = importlib.util.find_spec("coremltools")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeMissing(f"coremltools is not installed (needed to read .mlpackage files); {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "proto"
    if not (folder / "Model_pb2.py").is_file():
        raise RuntimeMissing(f"coremltools at {folder.parent} has no protobuf modules; reinstall: {INSTALL_HINT}")
    package = types.ModuleType(_PRIVATE)
    package.__path__ = [str(folder)]
    sys.modules[_PRIVATE] = package
    try:
        return importlib.import_module(f"{_PRIVATE}.Model_pb2")
    except ImportError as err:  # protobuf missing or too old for these generated files
        raise RuntimeMissing(f"cannot load coremltools' model format ({err}); {INSTALL_HINT}") from None


def mil_pb2() -> Any:
    """The ``MIL_pb2`` module (types and values of ML program operations)."""
    model = model_pb2()
    return sys.modules[model.__name__.rsplit(".", 1)[0] + ".MIL_pb2"]
