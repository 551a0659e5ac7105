"""Where TFLite int8 loses accuracy on a trained model: ``evit debug`` on the instrument's int8 artifact.

The trained instrument (``instrument.py``: seg-B1 fitted to colour regions of the test suite's
photos) is exported to TFLite int8 at 512x1024, calibrated on the calibration photos (four
views each), and compared layer by layer with PyTorch on the test photos, which calibration
never saw. The layers adding the
most error by themselves (run alone on the reference's inputs) are what accuracy-controlled
int8 keeps in float first; ``verify`` beside it gives the pixel agreement and the bound of
int8 weights alone, so the activation-quantisation share of the loss is visible.

    python benchmarks/int8_layers.py                 # writes results/int8_layers.json (+ .png)
    python benchmarks/int8_layers.py --snapshot      # on the unfinished instrument's last checkpoint
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import RESULTS, ROOT, write_result
from instrument import MODEL, _conftest, load_instrument, snapshot

sys.path.insert(0, str(ROOT))

TOP = 15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--weights", type=Path, help="other weights than the trained instrument")
    parser.add_argument("--snapshot", action="store_true", help="the unfinished instrument's last checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=6, help="test photos to compare on")
    args = parser.parse_args(argv)

    from evit_deploy import api
    from evit_deploy.configs import parse_resolution
    from evit_deploy.debug import debug_artifact
    from evit_deploy.debug.plot import plot_report

    if args.weights is not None:
        weights, label = args.weights, str(args.weights)
    elif args.snapshot:
        found = snapshot()
        if found is None:
            raise SystemExit("no unfinished instrument to snapshot; run instrument.py")
        weights, label = found[0], f"instrument snapshot at step {found[1]} (training unfinished)"
    else:
        weights, label = load_instrument(), "trained instrument (instrument.py)"
    resolution = parse_resolution(args.resolution)
    conftest = _conftest()
    with tempfile.TemporaryDirectory(prefix="evit-bench-int8-layers-") as tmp_name:
        tmp = Path(tmp_name)
        calib = conftest._write_photos(tmp / "calib", conftest.CALIB_PHOTOS, 4)
        test = conftest._write_photos(tmp / "test", conftest.TEST_PHOTOS, 1)
        started = time.perf_counter()
        result = api.export(MODEL, target="tflite", config="tflite-int8", weights=weights, out=tmp / "int8",
                            resolution=resolution, calib=calib, calib_samples=4 * len(conftest.CALIB_PHOTOS))
        export_s = time.perf_counter() - started
        print(f"exported {result.artifact} in {export_s:.0f} s", flush=True)
        parity = api.verify(result.artifact, images=test, threads=args.threads, record=False)
        print(f"verify: {parity.task_metrics}, weights alone {parity.weight_rounding}", flush=True)
        started = time.perf_counter()
        report = debug_artifact(result.artifact, images=test, samples=args.samples, threads=args.threads,
                                progress=lambda message: print(f"  {message}", flush=True))
        debug_s = time.perf_counter() - started
        plot = plot_report(report, RESULTS / "int8_layers.png")
    ranked = report.top_added(TOP)
    write_result("int8_layers", {
        "model": MODEL,
        "weights": label,
        "resolution": args.resolution,
        "artifact": "tflite int8 (config tflite-int8: float attention cores, HARD_SWISH and head)",
        "calibration": f"{len(conftest.CALIB_PHOTOS)} calibration photos x 4 views",
        "compared_on": f"{args.samples} test photos (not calibrated on): {', '.join(conftest.TEST_PHOTOS[:args.samples])}",
        "verify": {"task": parity.task_metrics, "weights_rounded_alone": parity.weight_rounding,
                   "logits": parity.outputs["logits"].to_dict()},
        "debug": {
            "threshold": report.threshold,
            "first_over_threshold": report.first_divergent.module if report.first_divergent else None,
            "layers_compared": len(report.layers),
            "output_instrumented": report.output.to_dict(),
            "output_deployed": report.deployed_output.to_dict(),
            "runner": report.runner,
            "top_added": [_row(layer) for layer in ranked],
            "by_stage": _by_stage(report),
            "layers": [_row(layer) for layer in report.layers],
            "seconds": round(debug_s, 1),
        },
        "plot": str(plot.relative_to(ROOT)),
        "export_seconds": round(export_s, 1),
        "note": "measured on a shared 2-core machine; rel_l2 = ||artifact - PyTorch|| / ||PyTorch|| over the "
                "compared photos; added = the layer run alone on PyTorch's inputs (its own error)",
    })
    for row in ranked:
        print(f"{row_text(row)}")
    return 0


def _row(layer: Any) -> dict[str, Any]:
    return {"module": layer.module, "class": layer.cls, "rel_l2": layer.errors.rel_l2, "added": layer.added,
            "cosine": layer.errors.cosine}


def row_text(layer: Any) -> str:
    return f"{layer.added or 0:.4f} added, {layer.errors.rel_l2:.4f} carried  {layer.module} ({layer.cls})"


def _by_stage(report: Any) -> dict[str, dict[str, float]]:
    """The leaf layers' added error summed in quadrature per stage (backbone.stages.N, head)."""
    stages: dict[str, list[float]] = {}
    for layer in report.leaves():
        if layer.added is None:
            continue
        parts = layer.module.split(".")
        stage = ".".join(parts[:3]) if parts[:2] == ["backbone", "stages"] else ".".join(parts[:2])
        stages.setdefault(stage, []).append(layer.added)
    return {stage: {"layers": len(v), "added_rss": sum(x * x for x in v) ** 0.5, "added_max": max(v)}
            for stage, v in stages.items()}


if __name__ == "__main__":
    sys.exit(main())
