"""Run a TensorRT engine: device buffers, pinned host buffers, CUDA events, CUDA graphs.

Written against the TensorRT 10/11 name-based API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) and cuda-python's runtime bindings (``cuda.bindings.runtime``, or the
older ``cuda.cudart``). Each ``infer`` records four CUDA events on one stream, so the
host-to-device copy, the engine and the device-to-host copy are timed separately;
``describe()`` reports their means, which ``evit profile`` puts in its ``runner`` section.

After the first run at a set of input shapes the engine's launch is captured into a CUDA graph
and replayed (TensorRT asks for one ordinary ``execute_async_v3`` after shapes change, before
capture, on a non-default stream); engines that cannot be captured (DLA, data-dependent shapes)
run with ``execute_async_v3`` and say so. Capture follows trtexec (NVIDIA/TensorRT
``samples/common/sampleInference.cpp``): thread-local capture mode, and on any failure the
capture is ended, the partial graph destroyed and the sticky CUDA error cleared, so the stream
stays usable for plain launches.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import Runner
from evit_deploy.errors import UsageError
from evit_deploy.spec import TensorInfo
from evit_deploy.trt.cuda import check, cudart


def _is_null(handle: Any) -> bool:
    return handle is None or int(handle) == 0


def capture_graph(rt: Any, stream: Any, launch: Callable[[], bool]) -> tuple[Any, str]:
    """``launch()`` on ``stream`` captured into an instantiated CUDA graph: (graph_exec, "captured"),
    or (None, why) with the stream out of capture mode and no CUDA error left behind."""
    capturing, graph = False, None
    try:
        check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        capturing = True
        launched = launch()
        capturing = False
        graph = check(rt.cudaStreamEndCapture(stream))  # cudaErrorStreamCaptureInvalidated raises here
        if not launched:
            raise RuntimeError("execute_async_v3 refused to run under capture")
        return check(rt.cudaGraphInstantiate(graph, 0)), "captured"
    except Exception as err:  # noqa: BLE001 - any capture failure: run without graphs
        if capturing:  # the launch raised mid-capture: end it, or the stream stays unusable
            _, graph = rt.cudaStreamEndCapture(stream)
        rt.cudaGetLastError()  # clear the sticky error the failed capture left
        return None, f"not capturable ({err}); using execute_async_v3"
    finally:
        if not _is_null(graph):
            rt.cudaGraphDestroy(graph)


class _Buffer:
    """A device allocation and a pinned host array of the same bytes."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        rt = cudart()
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.nbytes = max(1, int(np.prod(shape)) * self.dtype.itemsize)
        self.device = check(rt.cudaMalloc(self.nbytes))
        self._host_ptr = check(rt.cudaMallocHost(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self._host_ptr))
        self.host = np.frombuffer(raw, dtype=self.dtype, count=int(np.prod(shape))).reshape(shape)

    def free(self) -> None:
        """Release both allocations; ``host`` becomes empty, so a late read cannot touch freed
        pinned memory (numpy would segfault, not raise), and a second call does nothing."""
        if self._host_ptr is None:
            return
        rt = cudart()
        self.host = np.empty((0,), dtype=self.dtype)
        rt.cudaFree(self.device)
        rt.cudaFreeHost(self._host_ptr)
        self.device, self._host_ptr = None, None


class TrtRunner(Runner):
    """A serialized TensorRT engine on the local GPU."""

    backend = "tensorrt"

    def __init__(self, engine_path: Path, *, cuda_graph: bool = True) -> None:
        super().__init__()
        self.engine_path = engine_path
        self.use_graph = cuda_graph
        self.graph_note = "" if cuda_graph else "disabled"
        self._trt: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.events: list[Any] = []
        self.buffers: dict[str, _Buffer] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.graph_exec: Any = None
        self._runs_at_shape = 0
        self.times: dict[str, list[float]] = {"h2d_ms": [], "compute_ms": [], "d2h_ms": []}

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        from evit_deploy.trt.stack import import_tensorrt

        trt = self._trt = import_tensorrt()
        rt = cudart()
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise UsageError(f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine "
                             "(built by another TensorRT version or for another GPU?); rebuild it here")
        self.context = self.engine.create_execution_context()
        self.stream = check(rt.cudaStreamCreate())
        self.events = [check(rt.cudaEventCreate()) for _ in range(4)]
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self.inputs = [TensorInfo(n, self._dims(n), self._np_dtype(n).name) for n in self._inputs]
        self.outputs = [TensorInfo(n, self._dims(n), self._np_dtype(n).name) for n in self._outputs]

    def _dims(self, name: str) -> tuple[int | None, ...]:
        return tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))

    def _np_dtype(self, name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))

    def close(self) -> None:
        rt = cudart() if self.stream is not None else None
        self._drop_graph()
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        if rt is not None:
            for event in self.events:
                rt.cudaEventDestroy(event)
            rt.cudaStreamDestroy(self.stream)
        self.events, self.stream, self.context, self.engine = [], None, None, None

    # ------------------------------------------------------------------ running

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set input shapes, (re)allocate buffers, bind addresses; drops any captured graph."""
        self._drop_graph()
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        for name in self._inputs:
            if not self.context.set_input_shape(name, shapes[name]):
                raise UsageError(f"input {name!r} shape {shapes[name]} is outside the engine's optimization profile")
        for name in self._inputs + self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = _Buffer(shape, self._np_dtype(name))
            self.context.set_tensor_address(name, int(self.buffers[name].device))
        self.shapes = dict(shapes)
        self._runs_at_shape = 0

    def _drop_graph(self) -> None:
        if self.graph_exec is not None:
            cudart().cudaGraphExecDestroy(self.graph_exec)
            self.graph_exec = None

    def _capture(self) -> None:
        """Capture one engine launch into a CUDA graph; fall back to plain launches on failure."""
        self.graph_exec, self.graph_note = capture_graph(
            cudart(), self.stream, lambda: self.context.execute_async_v3(int(self.stream)))
        self.use_graph = self.graph_exec is not None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = cudart()
        shapes = {n: tuple(feed[n].shape) for n in self._inputs}
        if shapes != self.shapes:
            self._bind(shapes)
        for name in self._inputs:
            np.copyto(self.buffers[name].host, feed[name], casting="same_kind")
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        e0, e1, e2, e3 = self.events
        check(rt.cudaEventRecord(e0, self.stream))
        for name in self._inputs:
            b = self.buffers[name]
            check(rt.cudaMemcpyAsync(b.device, b.host.ctypes.data, b.nbytes, h2d, self.stream))
        check(rt.cudaEventRecord(e1, self.stream))
        if self.graph_exec is not None:
            check(rt.cudaGraphLaunch(self.graph_exec, self.stream))
        elif not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        check(rt.cudaEventRecord(e2, self.stream))
        for name in self._outputs:
            b = self.buffers[name]
            check(rt.cudaMemcpyAsync(b.host.ctypes.data, b.device, b.nbytes, d2h, self.stream))
        check(rt.cudaEventRecord(e3, self.stream))
        check(rt.cudaEventSynchronize(e3))
        for key, (a, b) in zip(self.times, ((e0, e1), (e1, e2), (e2, e3))):
            self.times[key].append(float(check(rt.cudaEventElapsedTime(a, b))))
        self._runs_at_shape += 1
        if self.use_graph and self.graph_exec is None and self._runs_at_shape == 1:
            self._capture()  # after one ordinary run at these shapes, as TensorRT requires
        return {name: self.buffers[name].host.copy() for name in self._outputs}

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.backend, "engine": self.engine_path.name, "device": "cuda",
                                "cuda_graph": self.graph_note or "not yet captured"}
        if self._trt is not None:
            info["version"] = str(self._trt.__version__)
        from evit_deploy.trt.stack import gpu_name

        info["gpu"] = gpu_name()
        for key, values in self.times.items():
            tail = values[1:] or values  # the first run includes lazy initialisation
            if tail:
                info[key] = round(float(np.mean(tail)), 4)
                info[key.replace("_ms", "_p50_ms")] = round(float(np.median(tail)), 4)
        return info
