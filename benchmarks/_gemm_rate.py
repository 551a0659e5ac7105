"""The fp32 rate this CPU sustains on a large GEMM: the compute floor's denominator.

ONNX Runtime's MatMul (MLAS, the kernels behind its convolutions) on 2048x2048x2048 fp32 at
the given thread count, best of several runs; one JSON line on stdout. Run in its own process
by onnx_speed.py, between the runtimes it times.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def gemm_gflops(threads: int, n: int = 2048, runs: int = 8) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])], [weight])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n)).astype(np.float32)
    session.run(None, {"A": a})
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"A": a})
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps({"gflops": gemm_gflops(args.threads), "threads": args.threads,
                      "how": "ONNX Runtime MatMul 2048^3 fp32, best of 8"}))


if __name__ == "__main__":
    main()
