"""TFLite int8 activation ranges: min/max against MSE-clipped (``int8_ranges``), seg-B1, plain int8.

For each set of weights (the fixtures' seeded ones and the trained instrument), the tflite-int8
recipe is exported twice from the same calibration images (7 photos x 4 views), once per range
choice, and each artifact is checked on the 6 test photos calibration never saw: pixel
agreement and mIoU against PyTorch, beside the bound of int8 weights alone (``verify``'s
weight-rounded model). The graph is the same either way (only scales change), so nothing is
timed but the export.

    python benchmarks/int8_ranges.py                      # both weights, 512x1024
    python benchmarks/int8_ranges.py --weights instrument --resolution 256x512
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, seeded_weights, write_result

sys.path.insert(0, str(ROOT))

MODEL = "efficientvit-seg-b1-cityscapes"
RANGES = ("min_max", "mse")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--weights", default="seeded,instrument", help="comma list of: seeded, instrument")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from instrument import _conftest, load_instrument

    from evit_deploy import api

    conftest = _conftest()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="evit-bench-int8-ranges-") as tmp_name:
        tmp = Path(tmp_name)
        calib = conftest._write_photos(tmp / "calib", conftest.CALIB_PHOTOS, 4)
        test = conftest._write_photos(tmp / "test", conftest.TEST_PHOTOS, 1)
        for which in args.weights.split(","):
            weights = seeded_weights("efficientvit_seg_b1_cityscapes") if which == "seeded" else load_instrument()
            row: dict[str, Any] = {}
            for ranges in RANGES:
                print(f"{which}: exporting int8 with {ranges} ranges", flush=True)
                started = time.perf_counter()
                result = api.export(MODEL, target="tflite", config="tflite-int8", weights=weights,
                                    out=tmp / which / ranges, resolution=args.resolution, calib=calib,
                                    calib_samples=4 * len(conftest.CALIB_PHOTOS), options={"int8_ranges": ranges})
                seconds = time.perf_counter() - started
                report = api.verify(result.artifact, images=test, threads=args.threads, record=False)
                bound = report.weight_rounding or {}
                row[ranges] = {**report.task_metrics, "export_seconds": round(seconds, 1),
                               "points_under_bound": round(100 * (bound.get("pixel_agreement", 0.0)
                                                                  - report.task_metrics["pixel_agreement"]), 2)}
                row["weights_rounded_alone"] = bound
                print(f"  {row[ranges]}", flush=True)
            rows[which] = row
    write_result("int8_ranges", {
        "model": MODEL,
        "resolution": args.resolution,
        "artifact": "tflite int8 (config tflite-int8), int8_ranges min_max vs mse",
        "calibration": f"{len(conftest.CALIB_PHOTOS)} calibration photos x 4 views",
        "compared_on": f"{len(conftest.TEST_PHOTOS)} test photos (not calibrated on): {', '.join(conftest.TEST_PHOTOS)}",
        "weights": {"seeded": "fixtures' seeded weights", "instrument": "trained instrument (instrument.py)"},
        "results": rows,
        "note": "pixel agreement and mIoU with PyTorch's classes; points_under_bound: how far under what int8 "
                "weights alone keep (negative: above it)",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
