"""CUDA-graph capture as trtexec does it (issue 20 item 7), with real cuda-python.

trtexec (NVIDIA/TensorRT samples/common/sampleInference.cpp) and NVIDIA's TensorRT-Edge-LLM
(``captureTRTCudaGraph``) capture in ``cudaStreamCaptureModeThreadLocal``; when the enqueue fails
they end the capture, destroy the partial graph and clear the sticky error with
``cudaGetLastError``, so the stream keeps working without graphs. The GPU test checks exactly
that on a device; here, without a driver, cuda-python's own refusal must fall back, not raise.
"""
from __future__ import annotations

import pytest

from evit_deploy.trt.runtime import capture_graph

cuda = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (the tensorrt extra) is not installed")


def _device_count() -> int:
    err, count = cuda.cudaGetDeviceCount()
    return count if err == cuda.cudaError_t.cudaSuccess else 0


def test_capture_without_a_driver_falls_back_without_launching():
    if _device_count():
        pytest.skip("a CUDA device is here: the gpu test covers capture")
    launched = []
    graph_exec, note = capture_graph(cuda, 0, lambda: launched.append(1) or True)
    assert graph_exec is None and not launched
    assert note.startswith("not capturable (CUDA error cudaErrorInsufficientDriver (35))")


@pytest.mark.gpu
def test_a_launch_that_fails_mid_capture_leaves_the_stream_usable():
    if not _device_count():
        pytest.skip("needs an NVIDIA GPU: cuda-python sees no CUDA device")
    from evit_deploy.trt.cuda import check

    stream = check(cuda.cudaStreamCreate())
    buffer = check(cuda.cudaMalloc(1 << 20))
    try:
        def failing() -> bool:
            check(cuda.cudaMemsetAsync(buffer, 1, 1 << 20, stream))  # captured, then the "engine" raises
            raise RuntimeError("enqueue failed")

        graph_exec, note = capture_graph(cuda, stream, failing)
        assert graph_exec is None and "enqueue failed" in note
        status = check(cuda.cudaStreamIsCapturing(stream))
        assert status == cuda.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        assert cuda.cudaGetLastError()[0] == cuda.cudaError_t.cudaSuccess
        check(cuda.cudaMemsetAsync(buffer, 0, 1 << 20, stream))  # plain launches still work
        check(cuda.cudaStreamSynchronize(stream))

        graph_exec, note = capture_graph(
            cuda, stream, lambda: check(cuda.cudaMemsetAsync(buffer, 2, 1 << 20, stream)) is None)
        assert note == "captured" and graph_exec is not None
        check(cuda.cudaGraphLaunch(graph_exec, stream))
        check(cuda.cudaStreamSynchronize(stream))
        check(cuda.cudaGraphExecDestroy(graph_exec))
    finally:
        cuda.cudaFree(buffer)
        cuda.cudaStreamDestroy(stream)
