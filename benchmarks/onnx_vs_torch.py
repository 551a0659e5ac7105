"""Our ONNX Runtime artifact vs PyTorch eager on seg-B1 at 512x1024, 2 threads.

Also measures what the ONNX recipe defaults rest on: ORT graph optimisation on vs off,
and each simplifier (none, onnxslim, onnxsim), all on the same input in the same run.
Writes benchmarks/results/onnx_vs_torch.json.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness import evit, interleaved, seeded_weights, write_result

MODEL = "efficientvit-seg-b1-cityscapes"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    weights = seeded_weights("efficientvit_seg_b1_cityscapes")
    common = ["--resolution", args.resolution, *(["--weights", weights] if weights else [])]
    with tempfile.TemporaryDirectory(prefix="evit-bench-") as tmp:
        variants = {
            "ort": [],
            "ort_no_graph_opt": ["--graph-optimization", "disable"],
            "ort_onnxslim": ["--simplify", "onnxslim"],
            "ort_onnxsim": ["--simplify", "onnxsim"],
        }
        artifacts = {}
        for name, extra in variants.items():
            print(f"exporting {name}", flush=True)
            artifacts[name] = [evit("export", MODEL, *common, "--out", Path(tmp) / name, "-q", *extra).strip()]
        candidates = {"torch_eager": [MODEL, "--target", "torch", "--resolution", args.resolution,
                                      *(["--weights", weights] if weights else [])], **artifacts}
        results = interleaved(candidates, rounds=args.rounds, threads=args.threads, warmup=args.warmup,
                              iters=args.iters)
    eager = results["torch_eager"]["p50_ms"]
    ort = results["ort"]["p50_ms"]
    write_result("onnx_vs_torch", {
        "model": MODEL,
        "resolution": args.resolution,
        "threads": args.threads,
        "rounds": args.rounds,
        "iters_per_round": args.iters,
        "weights": "fixtures' seeded trained-looking weights" if weights else "random init",
        "results": results,
        "speedup_ort_vs_eager": eager / ort,
        "target_speedup": 2.0,
        "meets_target": eager / ort >= 2.0,
        "ort_graph_optimisation_speedup": results["ort_no_graph_opt"]["p50_ms"] / ort,
        "simplifier_vs_none": {k: ort / results[f"ort_{k}"]["p50_ms"] for k in ("onnxslim", "onnxsim")},
    })
    print(f"ORT {ort:.1f} ms vs eager {eager:.1f} ms: {eager / ort:.2f}x")


if __name__ == "__main__":
    main()
