"""Peak memory of int8 calibration: the streamed calibration against the one-shot one it replaced.

Issue 14: ``evit export --target trt --plan-only --precision int8`` of seg-B1 at 512x1024 with 64
photos was OOM-killed at 24 GB; the target is seg-B1 at 1024x2048 with 64 photos under 4 GB for
every int8 target. Every figure is the peak RSS of one process (``/usr/bin/time -v``, "Maximum
resident set size"), one process at a time, under ``nice``:

- ``exports``: the real ``evit export --precision int8`` (TensorRT Q/DQ plan, TFLite) of seg-B1
  with seeded weights and 64 photos, at each resolution; also the peak RSS the manifest records.
- ``calibration``: the same graph calibrated streamed (evit) and one-shot (every image in one call
  to onnxruntime's calibrator / ai-edge-quantizer's default calibrator, as before) at a few image
  counts, so the figures say how memory grows per image; both build the same graph first.

    python benchmarks/calibration_memory.py                      # writes results/calibration_memory.json
    python benchmarks/calibration_memory.py --resolutions 512x1024 --counts 2,4   # a quicker run
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, seeded_weights, write_result
from tflite import write_photos

MODEL = "efficientvit-seg-b1-cityscapes"
PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "retina", "camera", "grass", "brick", "stereo_motorcycle",
          "chelsea", "rocket", "immunohistochemistry", "coins", "moon", "clock", "page", "gravel")  # x4 views: 64
TARGET_MB = 4096
TIME = "/usr/bin/time"


def measured(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``argv`` under ``nice`` and ``/usr/bin/time -v``: its peak RSS (MiB) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(["nice", "-n", "10", TIME, "-v", *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    assert peak, proc.stderr[-2000:]
    return {"peak_rss_mb": round(int(peak[1]) / 1024, 1), "seconds": round(seconds, 1), "stdout": proc.stdout}


def export(target: str, resolution: str, weights: Path, photos: Path, samples: int, out: Path,
           env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "evit_deploy.cli", "export", MODEL, "--weights", str(weights), "--target", target,
            "--precision", "int8", "--resolution", resolution, "--calib", str(photos), "--calib-samples",
            str(samples), "--out", str(out), "-q"] + (["--plan-only"] if target == "trt" else [])
    result = measured(argv, env)
    manifest = json.loads(next(out.glob("*.evit.json")).read_text())
    result.pop("stdout")
    return {**result, "manifest_peak_rss_mb": manifest["details"].get("peak_rss_mb")}


def calibrate(impl: str, target: str, resolution: str, weights: Path, photos: Path, count: int,
              env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", impl, target, resolution, str(weights),
            str(photos), str(count)]
    result = measured(argv, env)
    child_said = json.loads(result.pop("stdout").strip().splitlines()[-1])
    return {**result, **child_said}


def child(impl: str, target: str, resolution: str, weights: str, photos: str, count: int) -> None:
    """One calibration in this process: build the graph, then calibrate ``count`` images."""
    import warnings

    sys.path.insert(0, str(ROOT))
    warnings.simplefilter("ignore")
    from evit_deploy import zoo
    from evit_deploy.data import CalibrationImages
    from evit_deploy.spec import GraphIO

    card = zoo.get_card(MODEL)
    h, w = (int(v) for v in resolution.split("x"))
    spec = card.input_spec((h, w))
    model = zoo.create_model(MODEL, Path(weights))
    images = CalibrationImages(Path(photos), spec, count)
    before = _rss()
    if target == "trt":
        from evit_deploy.onnx.export import export_onnx_graph
        from evit_deploy.onnx.options import OnnxOptions

        graph = export_onnx_graph(model, GraphIO.image(spec), OnnxOptions(), Path(tempfile.mkdtemp()))
        del model
        before = _rss()
        if impl == "streamed":
            from evit_deploy.onnx.calibrate import stream_ranges

            stream_ranges(graph, images, input_name="input", op_types=["Conv"], method="percentile")
        else:
            from onnxruntime.quantization import CalibrationMethod
            from onnxruntime.quantization.calibrate import create_calibrator

            folder = Path(tempfile.mkdtemp())
            import onnx

            onnx.save_model(graph, str(folder / "m.onnx"), save_as_external_data=True)
            calibrator = create_calibrator(folder / "m.onnx", ["Conv"], augmented_model_path=str(folder / "a.onnx"),
                                           calibrate_method=CalibrationMethod.Percentile)
            calibrator.collect_data(_ListReader([x for x in images]))
            calibrator.compute_data()
    else:
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import calibrator, recipe_manager
        from ai_edge_quantizer.utils.qsv_utils import min_max_update

        from evit_deploy.tflite.convert import convert_fp32
        from evit_deploy.tflite.export import _Batches
        from evit_deploy.tflite.options import TfliteOptions
        from evit_deploy.tflite.quantize import _calibrate, int8_plan

        options = TfliteOptions()
        plan = int8_plan(convert_fp32(model, GraphIO.image(spec), options)[0], options)
        del model
        batches = _Batches(images, 1, nhwc=options.layout == "nhwc")
        signature = Interpreter(model_content=plan.marked).get_signature_list()
        key = next(iter(signature))
        name = signature[key]["inputs"][0]
        before = _rss()
        if impl == "streamed":
            _calibrate(plan.marked, plan.recipe, key, name, batches, "min_max")
        else:
            manager = recipe_manager.RecipeManager()
            manager.load_quantization_recipe(plan.recipe)
            one_shot = calibrator.Calibrator(plan.marked, num_threads=max(1, os.cpu_count() or 1),
                                             qsv_update_func=min_max_update)
            one_shot.calibrate({key: [{name: x} for x in batches]}, manager)
    print(json.dumps({"rss_before_calibration_mb": round(before, 1)}))


class _ListReader:
    def __init__(self, batches: list[Any]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


def _rss() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="512x1024,1024x2048")
    parser.add_argument("--samples", type=int, default=64, help="calibration images of the real exports")
    parser.add_argument("--counts", default="2,4", help="image counts of the calibration-only comparison")
    parser.add_argument("--compare-at", default="512x1024", help="resolution of the calibration-only comparison")
    parser.add_argument("--targets", default="trt,tflite")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, target, resolution, weights, photos, count = args.child
        child(impl, target, resolution, weights, photos, int(count))
        return 0
    weights = seeded_weights("efficientvit_seg_b1_cityscapes")
    if weights is None:
        print("needs the team's reference data (EVIT_SHARED) for seeded weights", file=sys.stderr)
        return 1
    targets = args.targets.split(",")
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="evit-bench-calib-") as tmp:
        photos = write_photos(Path(tmp) / "photos", PHOTOS, 4)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EVIT_CALIB_CACHE": str(Path(tmp) / "cache")}
        calibration: dict[str, Any] = {}
        for target in targets:
            for impl in ("one-shot", "streamed"):
                for count in counts:
                    print(f"calibration {target} {impl} {args.compare_at} x{count}", flush=True)
                    calibration.setdefault(target, {}).setdefault(impl, {})[str(count)] = calibrate(
                        impl, target, args.compare_at, weights, photos, count, env)
        exports: dict[str, Any] = {}
        for resolution in args.resolutions.split(","):
            for target in targets:
                print(f"export {target} int8 {resolution} x{args.samples}", flush=True)
                env["EVIT_CALIB_CACHE"] = str(Path(tmp) / f"cache-{target}-{resolution}")  # calibrate every time
                exports.setdefault(target, {})[resolution] = export(
                    target, resolution, weights, photos, args.samples, Path(tmp) / f"out-{target}-{resolution}", env)
    growth = {}
    for target, impls in calibration.items():  # MiB more peak RSS per calibration image (first to last count)
        growth[target] = {impl: round((runs[str(counts[-1])]["peak_rss_mb"] - runs[str(counts[0])]["peak_rss_mb"])
                                      / max(1, counts[-1] - counts[0]), 1) for impl, runs in impls.items()}
    write_result("calibration_memory", {
        "model": MODEL, "weights": "seeded (fixtures, seed 1234)", "photos": len(PHOTOS) * 4,
        "note": "peak RSS per process (/usr/bin/time -v), one process at a time; measured on a shared machine",
        "target_mb": TARGET_MB,
        "exports": exports,
        "calibration": {"resolution": args.compare_at, "counts": counts, "runs": calibration,
                        "mb_per_image": growth},
        "within_target": {t: {r: e["peak_rss_mb"] < TARGET_MB for r, e in per.items()} for t, per in exports.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
