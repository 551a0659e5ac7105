"""Which Q/DQ scheme ONNX Runtime's CPU kernels run fastest: seg-B1 at 512x1024, 2 threads, in one process.

The schemes (``evit_deploy.onnx.qdq.ORT_SCHEMES``, and the op types given Q/DQ) are built from one
fp32 graph with the same islands and min/max ranges (speed does not depend on the ranges), loaded
side by side and timed round-robin, run by run, so the load of a shared machine falls on all alike;
the figures are each candidate's median over the rounds and its ratio to fp32.

``HardSwish as Add/Clip/Mul`` is evit's int8 HardSwish (``evit_deploy.onnx.hardswish``, the
default since): each HardSwish outside the islands as ``x * Clip(x + 3, 0, 6) / 6``, the ``/ 6``
folded into the convolutions reading it, so ONNX Runtime runs it in int8 (QLinearAdd, the Clip
folded into the quantisation range, QLinearMul) instead of a float HardSigmoid + Mul between a
DequantizeLinear and a QuantizeLinear (it has no int8 HardSwish).

    python benchmarks/onnx_int8_schemes.py     # writes benchmarks/results/onnx_int8_schemes.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import ROOT, seeded_weights, write_result

sys.path.insert(0, str(ROOT))

MODEL = "efficientvit-seg-b1-cityscapes"
CANDIDATES = {"qdq-u8s8 Conv": ("qdq-u8s8", ["Conv"]), "qdq-s8s8 Conv": ("qdq-s8s8", ["Conv"]),
              "qoperator-u8s8 Conv": ("qoperator-u8s8", ["Conv"]), "qdq-u8s8 Conv+Add": ("qdq-u8s8", ["Conv", "Add"]),
              "qdq-u8s8 Conv+Add, HardSwish as Add/Clip/Mul": ("qdq-u8s8", ["Conv", "Add", "Mul", "Clip"])}
DECOMPOSED = "qdq-u8s8 Conv+Add, HardSwish as Add/Clip/Mul"


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort

    from evit_deploy import api
    from evit_deploy.graph import name_nodes, select_islands
    from evit_deploy.onnx.hardswish import decompose_hardswish
    from evit_deploy.onnx.layer_map import module_nodes
    from evit_deploy.onnx.qdq import ORT_SCHEMES, quantize_qdq

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.resolution.split("x"))
    with tempfile.TemporaryDirectory(prefix="evit-bench-schemes-") as tmp:
        os.environ["EVIT_CALIB_CACHE"] = str(Path(tmp) / "cache")
        path = api.export(MODEL, target="onnx", weights=seeded_weights("efficientvit_seg_b1_cityscapes"),
                          out=Path(tmp) / "fp32", resolution=(h, w)).artifact
        graph = onnx.load(str(path))
        upsampling = json.loads(path.with_name(path.stem + ".evit.json").read_text())["details"].get(
            "bicubic_rewrite", [])
    name_nodes(graph)
    head = [n.name for n in graph.graph.node if set(n.output) & {o.name for o in graph.graph.output}]
    exclude = [n for i in select_islands(graph, ["attention", "resize"]) for n in i.nodes] + head + \
        [n for path in upsampling for n in module_nodes(graph, path)]
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, h, w)).astype(np.float32) for _ in range(2)]
    models = {"fp32": graph}
    with tempfile.TemporaryDirectory(prefix="evit-bench-schemes-") as tmp:
        os.environ["EVIT_CALIB_CACHE"] = tmp
        for name, (scheme, ops) in CANDIDATES.items():
            print(f"quantising {name}", flush=True)
            source = decompose_hardswish(graph, exclude).model if name == DECOMPOSED else copy.deepcopy(graph)
            models[name], _ = quantize_qdq(source, calib, input_name="input", exclude=exclude,
                                           op_types=ops, method="minmax", key_material={"speed": 1},
                                           scheme=ORT_SCHEMES[scheme])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {k: ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for k, m in models.items()}
    feed = {"input": calib[0]}
    for session in sessions.values():
        session.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for round_index in range(args.rounds):
        order = list(sessions) if round_index % 2 == 0 else list(reversed(sessions))
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(1000 * (time.perf_counter() - start))
        print(f"  round {round_index + 1}/{args.rounds}", flush=True)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    write_result("onnx_int8_schemes", {
        "model": MODEL, "resolution": args.resolution, "threads": args.threads, "rounds": args.rounds,
        "weights": "fixtures' seeded trained-looking weights", "p50_ms": p50,
        "speedup_over_fp32": {k: p50["fp32"] / v for k, v in p50.items() if k != "fp32"},
        "ms_per_round": times,
        "note": "one process, candidates alternated run by run on a shared 2-core machine: ratios only",
    })
    print({k: round(p50["fp32"] / v, 2) for k, v in p50.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
