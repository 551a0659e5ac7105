"""The CUDA half of the TensorRT runner on a real GPU: cuda-python as ``trt/runtime.py`` drives it.

Needs an NVIDIA GPU and cuda-python, not TensorRT, so it runs where a GPU is lent without a
TensorRT wheel (and checks the stack probe against a real driver): pinned host buffers and device
buffers through one stream, the four timing events, a launch captured into a CUDA graph and
replayed, and the two ways a capture fails, after which the stream must still work (the runner
then falls back to plain launches on it).
"""
from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from evit_deploy.trt.stack import cuda_unavailable

MISSING = cuda_unavailable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(MISSING is not None, reason=f"CUDA: {MISSING}")]


@pytest.fixture
def cuda() -> Any:
    from evit_deploy.trt.cuda import check, cudart

    rt = cudart()
    stream = check(rt.cudaStreamCreate())
    yield rt, stream
    check(rt.cudaStreamSynchronize(stream))
    rt.cudaStreamDestroy(stream)


def buffers(*shape: int) -> tuple[Any, Any]:
    from evit_deploy.trt.runtime import _Buffer

    return _Buffer(shape, np.dtype(np.float32)), _Buffer(shape, np.dtype(np.float32))


def upload(rt: Any, stream: Any, buffer: Any) -> None:
    from evit_deploy.trt.cuda import check

    check(rt.cudaMemcpyAsync(buffer.device, buffer.host.ctypes.data, buffer.nbytes,
                             rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))


def download(rt: Any, stream: Any, buffer: Any) -> None:
    from evit_deploy.trt.cuda import check

    check(rt.cudaMemcpyAsync(buffer.host.ctypes.data, buffer.device, buffer.nbytes,
                             rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
    check(rt.cudaStreamSynchronize(stream))


def device_copy(rt: Any, stream: Any, src: Any, dst: Any) -> bool:
    """Stands in for ``execute_async_v3``: device work enqueued on the stream (capturable)."""
    from evit_deploy.trt.cuda import check

    check(rt.cudaMemcpyAsync(dst.device, src.device, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream))
    return True


def test_the_stack_probe_sees_this_gpu() -> None:
    from evit_deploy.trt.stack import describe

    found = describe()
    print(found)
    assert found["problem"] is None and found["gpu"] and found["cuda_python"] and found["driver_cuda"]


def test_buffers_round_trip_and_the_events_time_each_step(cuda) -> None:
    from evit_deploy.trt.cuda import check

    rt, stream = cuda
    src, dst = buffers(2, 3, 64, 64)
    try:
        src.host[...] = np.random.default_rng(0).standard_normal(src.shape)
        events = [check(rt.cudaEventCreate()) for _ in range(4)]
        check(rt.cudaEventRecord(events[0], stream))
        upload(rt, stream, src)
        check(rt.cudaEventRecord(events[1], stream))
        device_copy(rt, stream, src, dst)
        check(rt.cudaEventRecord(events[2], stream))
        download(rt, stream, dst)
        check(rt.cudaEventRecord(events[3], stream))
        check(rt.cudaEventSynchronize(events[3]))
        times = [float(check(rt.cudaEventElapsedTime(a, b))) for a, b in pairwise(events)]
        for event in events:
            rt.cudaEventDestroy(event)
        np.testing.assert_array_equal(dst.host, src.host)
        assert all(t >= 0 for t in times), times
    finally:
        src.free()
        dst.free()
    assert src.host.size == 0 and dst.host.size == 0  # freed: no view of released pinned memory is left
    src.free()  # twice is harmless (close() after a failed bind)


def test_a_captured_launch_replays_on_new_inputs(cuda) -> None:
    from evit_deploy.trt.cuda import check
    from evit_deploy.trt.runtime import capture_graph

    rt, stream = cuda
    src, dst = buffers(1, 256, 64, 64)
    try:
        graph, note = capture_graph(rt, stream, lambda: device_copy(rt, stream, src, dst))
        assert note == "captured" and graph is not None
        for seed in (1, 2):  # the graph reads the same addresses: new data, same launch
            src.host[...] = np.random.default_rng(seed).standard_normal(src.shape)
            upload(rt, stream, src)
            check(rt.cudaGraphLaunch(graph, stream))
            download(rt, stream, dst)
            np.testing.assert_array_equal(dst.host, src.host)
        rt.cudaGraphExecDestroy(graph)
    finally:
        src.free()
        dst.free()


@pytest.mark.parametrize("failure", ["raises", "refuses"])
def test_a_failed_capture_leaves_the_stream_usable(cuda, failure: str) -> None:
    from evit_deploy.trt.cuda import check
    from evit_deploy.trt.runtime import capture_graph

    rt, stream = cuda
    src, dst = buffers(4, 1024)

    def launch() -> bool:
        device_copy(rt, stream, src, dst)
        if failure == "raises":
            raise RuntimeError("enqueue failed")
        return False

    try:
        graph, note = capture_graph(rt, stream, launch)
        assert graph is None
        assert note.startswith("not capturable (") and note.endswith("; using execute_async_v3"), note
        assert ("enqueue failed" if failure == "raises" else "refused to run under capture") in note
        assert check(rt.cudaStreamIsCapturing(stream)) == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        src.host[...] = 7.0
        upload(rt, stream, src)
        device_copy(rt, stream, src, dst)  # a plain launch after the failed capture
        download(rt, stream, dst)
        np.testing.assert_array_equal(dst.host, src.host)
    finally:
        src.free()
        dst.free()
