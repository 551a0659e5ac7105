"""LiteRT's own op profiler, reached through the C API of ``libLiteRt.so`` (ctypes).

ai-edge-litert's Python ``Interpreter`` and ``CompiledModel`` expose no profiler, but the
wheel ships ``libLiteRt.so`` whose CompiledModel takes runtime options with
``enable_profiling = true`` and hands back a profiler whose summary is TFLite's usual
op-wise table (the one ``benchmark_model --enable_op_profiling`` prints). With the XNNPACK
CPU accelerator the rows are XNNPACK's operators (e.g. ``Delegate/Fully Connected (NC, QS8,
QC8W) GEMM``) and the TFLite kernels left outside the delegate (e.g. ``HARD_SWISH``).

Everything here is best effort: any missing symbol or failing call raises
``ProfilerUnavailable`` and the runner turns that into a one-line usage error. No torch.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_OK = 0
_CPU = 1  # kLiteRtHwAcceleratorCpu
_LOCK_WRITE = 1  # kLiteRtTensorBufferLockModeWrite


class ProfilerUnavailable(RuntimeError):
    """This ai-edge-litert build cannot profile ops (symbols missing or a call failed)."""


class _Layout(ctypes.Structure):
    _fields_ = [("rank_and_flags", ctypes.c_uint32), ("dims", ctypes.c_int32 * 8), ("strides", ctypes.c_uint32 * 8)]


class _RankedTensorType(ctypes.Structure):
    # element type + layout, padded generously: the library only writes its own struct size.
    _fields_ = [("element_type", ctypes.c_int32), ("layout", _Layout), ("_reserve", ctypes.c_char * 128)]


@dataclass
class OpRow:
    """One row of the profile's "Run Order" table (times are per invocation)."""

    node_type: str
    name: str
    avg_ms: float
    calls: int


_ROW = re.compile(
    r"^\s*(?P<type>\S.*?)\s+(?P<start>[\d.]+)\s+(?P<first>[\d.]+)\s+(?P<avg>[\d.]+)\s+(?P<pct>[\d.]+)%"
    r"\s+(?P<cdf>[\d.]+)%\s+(?P<mem>[-\d.]+)\s+(?P<calls>\d+)\s+(?P<name>\S.*?)\s*$"
)


def parse_run_order(summary: str) -> list[OpRow]:
    """Rows of the "Run Order" section of a TFLite profile summary."""
    rows: list[OpRow] = []
    inside = False
    for line in summary.splitlines():
        if "Run Order" in line:
            inside = True
            continue
        if inside and line.startswith("=") and rows:
            break
        if not inside:
            continue
        match = _ROW.match(line)
        if match and match["type"] != "[node type]":
            rows.append(OpRow(match["type"], match["name"], float(match["avg"]), int(match["calls"])))
    return rows


def _library() -> ctypes.CDLL:
    try:
        import ai_edge_litert
    except ImportError as err:  # pragma: no cover - the runner checks this first
        raise ProfilerUnavailable("ai-edge-litert is not installed") from err
    path = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
    if not path.is_file():
        raise ProfilerUnavailable(f"{path.name} not found in ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}")
    lib = ctypes.CDLL(str(path))
    for symbol in ("LiteRtCreateEnvironment", "LiteRtCreateModelFromFile", "LiteRtCreateOpaqueOptions",
                   "LiteRtCompiledModelGetProfiler", "LiteRtGetProfileSummary", "LiteRtLockTensorBuffer"):
        if not hasattr(lib, symbol):
            raise ProfilerUnavailable(f"{path.name} lacks {symbol}")
    return lib


class _Session:
    """Environment, model, compiled model and buffers; destroyed in reverse order."""

    def __init__(self, model_path: Path, threads: int) -> None:
        self.lib = _library()
        self._keep: list[object] = []
        self._noop = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _p: None)
        self.env = self._out("LiteRtCreateEnvironment", ctypes.c_int(0), None)
        self.model = self._out("LiteRtCreateModelFromFile", self.env, str(model_path).encode())
        self.options = self._out("LiteRtCreateOptions")
        self._check(self.lib.LiteRtSetOptionsHardwareAccelerators(self.options, ctypes.c_int(_CPU)),
                    "LiteRtSetOptionsHardwareAccelerators")
        # Opaque options are TOML payloads keyed by an identifier (litert_runtime_options.cc,
        # litert_cpu_options.cc); the deleter is a no-op because Python owns the buffers.
        self._add_opaque(b"runtime_options_string", b"enable_profiling = true\n")
        self._add_opaque(b"xnnpack", f"num_threads = {int(threads)}\n".encode())
        self.compiled = self._out("LiteRtCreateCompiledModel", self.env, self.model, self.options)
        self.signature = self._out("LiteRtGetModelSignature", self.model, ctypes.c_size_t(0))
        self.inputs = self._buffers("Input")
        self.outputs = self._buffers("Output")
        self.profiler = self._out("LiteRtCompiledModelGetProfiler", self.compiled)

    def _check(self, status: int, what: str) -> None:
        if status != _OK:
            raise ProfilerUnavailable(f"{what} returned LiteRT status {status}")

    def _out(self, fn: str, *args: object) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._check(getattr(self.lib, fn)(*args, ctypes.byref(handle)), fn)
        return handle

    def _add_opaque(self, identifier: bytes, payload: bytes) -> None:
        buffer = ctypes.create_string_buffer(payload)
        self._keep.append(buffer)
        opaque = self._out("LiteRtCreateOpaqueOptions", ctypes.c_char_p(identifier),
                           ctypes.cast(buffer, ctypes.c_void_p), self._noop)
        self._check(self.lib.LiteRtAddOpaqueOptions(self.options, opaque), "LiteRtAddOpaqueOptions")

    def _buffers(self, kind: str) -> list[ctypes.c_void_p]:
        count = ctypes.c_size_t()
        self._check(getattr(self.lib, f"LiteRtGetNumSignature{kind}s")(self.signature, ctypes.byref(count)),
                    f"LiteRtGetNumSignature{kind}s")
        buffers = []
        for index in range(count.value):
            tensor = self._out(f"LiteRtGetSignature{kind}TensorByIndex", self.signature, ctypes.c_size_t(index))
            tensor_type = _RankedTensorType()
            self._check(self.lib.LiteRtGetRankedTensorType(tensor, ctypes.byref(tensor_type)),
                        "LiteRtGetRankedTensorType")
            requirements = self._out(f"LiteRtGetCompiledModel{kind}BufferRequirements", self.compiled,
                                     ctypes.c_size_t(0), ctypes.c_size_t(index))
            buffers.append(self._out("LiteRtCreateManagedTensorBufferFromRequirements", self.env,
                                     ctypes.byref(tensor_type), requirements))
        return buffers

    def write(self, index: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array)
        size = ctypes.c_size_t()
        self._check(self.lib.LiteRtGetTensorBufferPackedSize(self.inputs[index], ctypes.byref(size)),
                    "LiteRtGetTensorBufferPackedSize")
        if size.value != data.nbytes:
            raise ProfilerUnavailable(f"input {index} takes {size.value} bytes, got {data.nbytes}")
        host = ctypes.c_void_p()
        self._check(self.lib.LiteRtLockTensorBuffer(self.inputs[index], ctypes.byref(host), ctypes.c_int(_LOCK_WRITE)),
                    "LiteRtLockTensorBuffer")
        try:
            ctypes.memmove(host, data.ctypes.data, data.nbytes)
        finally:
            self.lib.LiteRtUnlockTensorBuffer(self.inputs[index])

    def run(self) -> None:
        ins = (ctypes.c_void_p * len(self.inputs))(*self.inputs)
        outs = (ctypes.c_void_p * len(self.outputs))(*self.outputs)
        self._check(self.lib.LiteRtRunCompiledModel(self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(len(ins)), ins,
                                                    ctypes.c_size_t(len(outs)), outs), "LiteRtRunCompiledModel")

    def summary(self) -> str:
        text = ctypes.c_void_p()
        self._check(self.lib.LiteRtGetProfileSummary(self.profiler, self.compiled, ctypes.byref(text)),
                    "LiteRtGetProfileSummary")
        try:
            return ctypes.string_at(text).decode(errors="replace")
        finally:
            libc = ctypes.CDLL(None)
            libc.free(text)

    def close(self) -> None:
        lib = self.lib
        for buffer in self.inputs + self.outputs:
            lib.LiteRtDestroyTensorBuffer(buffer)
        for fn, handle in (("LiteRtDestroyCompiledModel", self.compiled), ("LiteRtDestroyOptions", self.options),
                           ("LiteRtDestroyModel", self.model), ("LiteRtDestroyEnvironment", self.env)):
            if handle:
                getattr(lib, fn)(handle)


def profile_ops(model_path: Path, feeds: list[np.ndarray], *, threads: int, iters: int,
                warmup: int = 2) -> tuple[list[OpRow], str]:
    """Run ``model_path`` ``iters`` times under LiteRT's profiler; rows (per run) and raw summary.

    ``feeds`` are the model's inputs in signature order, already in its layout and dtype.
    """
    session = _Session(model_path, threads)
    try:
        for index, array in enumerate(feeds):
            session.write(index, array)
        for _ in range(warmup):
            session.run()
        lib = session.lib
        session._check(lib.LiteRtResetProfiler(session.profiler), "LiteRtResetProfiler")
        session._check(lib.LiteRtStartProfiler(session.profiler), "LiteRtStartProfiler")
        for _ in range(iters):
            session.run()
        session._check(lib.LiteRtStopProfiler(session.profiler), "LiteRtStopProfiler")
        summary = session.summary()
    finally:
        session.close()
    rows = parse_run_order(summary)
    if not rows:
        raise ProfilerUnavailable("the profiler returned no op rows")
    return rows, summary


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)
