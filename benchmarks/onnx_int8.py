"""ONNX Runtime int8 vs fp32 on seg-B1 at 512x1024, 2 threads, and which Q/DQ scheme ORT runs fastest.

Every artifact is timed by ``evit profile`` in its own process, round-robin over several rounds
(harness.interleaved); the figures are ratios from this one run. The int8 candidates are the
schemes of ``evit_deploy.onnx.qdq.ORT_SCHEMES`` (QDQ u8s8 / s8s8, QOperator u8s8) with HardSwish
in int8 (the default, ``evit_deploy.onnx.hardswish``), and the first scheme with HardSwish left
in float (``--int8-hardswish float``) for comparison, calibrated once per graph (cached ranges)
on the 7 calibration photos x 4 views of ``tests/conftest.py``. ``verify`` on its 6 test photos,
which the calibration never saw, gives each artifact's pixel agreement with PyTorch and the int8
weight-rounded bound it is held against.

    python benchmarks/onnx_int8.py                          # seeded weights: results/onnx_int8.json
    python benchmarks/onnx_int8.py --weights instrument     # the trained instrument: onnx_int8_instrument.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import ROOT, evit, interleaved, write_result
from instrument import _conftest, weights_named

sys.path.insert(0, str(ROOT))

MODEL = "efficientvit-seg-b1-cityscapes"
SCHEMES = ("qdq-u8s8", "qdq-s8s8", "qoperator-u8s8", "qdq-u8u8")
FLOAT_HARDSWISH = " float HardSwish"  # the candidate without evit's int8 HardSwish
TARGET_SPEEDUP = 1.4  # int8 over fp32 on ORT's CPU provider (issue 18)
TARGET_GAP = 0.015  # pixel agreement at most 1.5 points under the int8 weight-rounded bound


def parity(artifact: Path, images: Path, threads: int) -> dict[str, Any]:
    from evit_deploy import api

    report = api.verify(artifact, images=images, threads=threads, record=False)
    agreement = report.task_metrics["pixel_agreement"]
    bound = (report.weight_rounding or {}).get("pixel_agreement")
    return {"pixel_agreement": agreement, "weight_rounded_bound": bound,
            "gap_to_bound": None if bound is None else bound - agreement,
            "cosine": report.outputs["logits"].cosine, "passed": report.passed,
            "failed": [c.name for c in report.failures], "images": report.samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--views", type=int, default=4, choices=range(1, 5),
                        help="calibration views of each calibration photo (1-4)")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--weights", default="seeded", help="seeded, instrument, or a checkpoint path")
    parser.add_argument("--suffix", default="", help="appended to the result's name (another machine, another run)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]*", args.suffix):
        parser.error(f"--suffix goes into a file name under benchmarks/results: letters, digits, _ . - only "
                     f"(got {args.suffix!r})")

    weights, label = weights_named(args.weights)
    schemes = [s for s in args.schemes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="evit-bench-onnx-int8-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["EVIT_CALIB_CACHE"] = str(tmp / "calib-cache")  # the schemes share one calibration
        conftest = _conftest()  # the photos int8_ranges.py and int8_control.py calibrate and check on
        calib = conftest._write_photos(tmp / "calib", conftest.CALIB_PHOTOS, args.views)
        test = conftest._write_photos(tmp / "test", conftest.TEST_PHOTOS, 1)
        samples = args.views * len(conftest.CALIB_PHOTOS)
        common = ["--resolution", args.resolution, *(["--weights", weights] if weights else []), "-q"]
        print("exporting onnx_fp32", flush=True)
        artifacts = {"onnx_fp32": Path(evit("export", MODEL, "--target", "onnx", "--config", "onnx-fp32", *common,
                                            "--out", tmp / "fp32").strip())}
        candidates = {scheme: (scheme, "int8") for scheme in schemes}
        candidates[schemes[0] + FLOAT_HARDSWISH] = (schemes[0], "float")
        for name, (scheme, hardswish) in candidates.items():
            print(f"exporting onnx_int8 {name}", flush=True)
            artifacts[name] = Path(evit("export", MODEL, "--target", "onnx", "--config", "onnx-int8", *common,
                                        "--calib", calib, "--calib-samples", samples,
                                        "--out", tmp / name.replace(" ", "-"), "--int8-scheme", scheme,
                                        "--int8-hardswish", hardswish).strip())
        sizes = {name: path.stat().st_size for name, path in artifacts.items()}
        results = interleaved({name: [path] for name, path in artifacts.items()}, rounds=args.rounds,
                              threads=args.threads, warmup=args.warmup, iters=args.iters)
        checks = {name: parity(path, test, args.threads) for name, path in artifacts.items() if name != "onnx_fp32"}

    p50 = {name: r["p50_ms"] for name, r in results.items()}
    speedups = {name: p50["onnx_fp32"] / p50[name] for name in candidates}
    best = max(speedups, key=speedups.__getitem__)
    gap = checks[best]["gap_to_bound"]
    write_result("onnx_int8" + ("_instrument" if args.weights == "instrument" else "") + args.suffix, {
        "model": MODEL,
        "resolution": args.resolution,
        "threads": args.threads,
        "rounds": args.rounds,
        "iters_per_round": args.iters,
        "calibration": f"{len(conftest.CALIB_PHOTOS)} calibration photos x {args.views} views (the recipe's "
                       f"calib_method, streamed); parity on {len(conftest.TEST_PHOTOS)} "
                       "other photos",
        "weights": label if weights else "random init",
        "p50_ms": p50,
        "int8_speedup_over_fp32": speedups,
        "fastest_scheme": best,
        "target_int8_speedup": TARGET_SPEEDUP,
        "meets_speed_target": speedups[best] >= TARGET_SPEEDUP,
        "target_gap_to_bound": TARGET_GAP,
        "meets_agreement_target": gap is not None and gap <= TARGET_GAP,
        "size_bytes": sizes,
        "parity_on_unseen_photos": checks,
        "results": results,
        "note": "measured on a shared 2-core machine: ratios from one interleaved run",
    })
    print(json.dumps({"p50_ms": p50, "speedups": speedups, "parity": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
