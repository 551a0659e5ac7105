"""Accuracy-controlled int8 (``--min-agreement``) against plain int8 and fp32, seg-B1, per target.

Three artifacts from one set of weights: fp32, plain int8 (the target's int8 recipe) and int8
with accuracy control (the same recipe plus ``min_agreement``; a quarter of the calibration
images held out for the agreement the control steers by). Each is then checked on the test
photos, which neither calibration nor control saw (pixel agreement with PyTorch; ``verify``
also gives the bound of int8 weights alone), and timed round-robin in one run (ratios to fp32).
The control's own curve (layers kept float -> held-out agreement, ms per image) goes to a PNG.

``--target trt`` writes TensorRT's Q/DQ ONNX (plan only: no GPU here) and checks it on ONNX
Runtime, as its control measured it; nothing is timed, since ORT's speed says nothing of an
engine's.

    python benchmarks/int8_control.py --resolution 256x512 --min-agreement 0.94     # seeded weights
    python benchmarks/int8_control.py --weights instrument --min-agreement 0.99     # the trained instrument
    python benchmarks/int8_control.py --target trt --min-agreement 0.94 --max-float-share 0.5
    python benchmarks/int8_control.py       # no arguments (make bench): the RUNS below, one after another
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import RESULTS, ROOT, interleaved, write_result

sys.path.insert(0, str(ROOT))

MODEL = "efficientvit-seg-b1-cityscapes"
# target -> fp32 recipe (None: not timed here), int8 recipe, options every export of it takes
RECIPES: dict[str, tuple[str | None, str, dict[str, Any]]] = {
    "tflite": ("tflite-fp32", "tflite-int8", {}),
    "onnx": ("onnx-fp32", "onnx-int8", {}),
    "trt": (None, "trt-int8", {"plan_only": True}),
}


def _export_controlled(target: str, weights: Path, out: Path, resolution: tuple[int, int], calib: Path,
                       samples: int, options: dict[str, Any]) -> tuple[Path, str | None]:
    """The controlled artifact, and the one-line reason when its target was not met (exit 1)."""
    from evit_deploy import api
    from evit_deploy.errors import CheckFailed

    try:
        result = api.export(MODEL, target=target, config=RECIPES[target][1], weights=weights, out=out,
                            resolution=resolution, calib=calib, calib_samples=samples, options=options,
                            progress=lambda message: print(f"  {message}", flush=True))
        return result.artifact, None
    except CheckFailed as failed:
        (kept,) = [p for p in out.glob("*.below-min-agreement.*") if not p.name.endswith((".json", ".sh"))]
        return kept, str(failed)


def _ort_agreement(path: Path, weights: Path, images: Path) -> dict[str, float]:
    """Pixel agreement with PyTorch of a Q/DQ ONNX run on ONNX Runtime, on every image of ``images``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from evit_deploy import zoo
    from evit_deploy.artifact import open_artifact
    from evit_deploy.data import input_batches, list_images

    spec = open_artifact(path).spec
    model = zoo.create_model(MODEL, weights).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree = total = 0
    for image in input_batches(spec, samples=len(list_images(images)), seed=0, source=images):
        with torch.inference_mode():
            expected = model(torch.from_numpy(image)).numpy().argmax(axis=1)
        got = session.run(None, {spec.name: image})[0].argmax(axis=1)
        agree, total = agree + int(np.sum(got == expected)), total + expected.size
    return {"pixel_agreement": agree / total}


def plot_curve(steps: list[dict[str, Any]], target: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefixes = sorted((s for s in steps if "dropped" not in s), key=lambda s: s["kept_float"])
    drops = [s for s in steps if "dropped" in s]
    (chosen,) = [s for s in steps if s["chosen"]]
    fig, left = plt.subplots(figsize=(7, 4))
    kept = [s["kept_float"] for s in prefixes]
    left.plot(kept, [s["agreement"] for s in prefixes], "o-", label="held-out agreement, worst layers float")
    left.plot([s["kept_float"] for s in drops], [s["agreement"] for s in drops], "x", color="grey",
              label="a meeting set less one layer")
    left.plot([chosen["kept_float"]], [chosen["agreement"]], "*", color="tab:green", markersize=14, label="chosen")
    left.axhline(target, color="grey", linestyle="--", label=f"--min-agreement {target:g}")
    left.set_xlabel("quantised layers kept float")
    left.set_ylabel("pixel agreement with PyTorch (held-out calibration images)")
    right = left.twinx()
    right.plot(kept, [s["ms_per_image"] for s in prefixes], "s:", color="tab:red", label="ms per image")
    right.set_ylabel("ms per image (measured during control, shared machine)")
    left.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# What `make bench` measures: each target on seeded weights, and TFLite on the trained instrument
# (trained first if benchmarks/.cache lacks it: about 40 minutes on a quiet 2-core machine).
RUNS = [
    ["--target", "tflite", "--min-agreement", "0.94", "--max-float-share", "0.5"],
    ["--target", "trt", "--min-agreement", "0.94", "--max-float-share", "0.5"],
    ["--target", "onnx", "--min-agreement", "0.94", "--max-float-share", "0.5"],
    ["--weights", "instrument", "--min-agreement", "0.99"],
    # a little above the target, for the photos the control never saw
    ["--weights", "instrument", "--min-agreement", "0.991", "--suffix", "_0991"],
    ["--weights", "instrument", "--min-agreement", "0.992", "--suffix", "_0992"],
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(RECIPES), default="tflite")
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--weights", default="seeded", help="seeded, instrument, or a checkpoint path")
    parser.add_argument("--min-agreement", type=float, default=0.94)
    parser.add_argument("--max-float-share", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--suffix", default="", help="appended to the results' file names (a second run of a case)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]*", args.suffix):
        parser.error(f"--suffix goes into file names under benchmarks/results: letters, digits, _ . - only "
                     f"(got {args.suffix!r})")

    from instrument import _conftest, weights_named

    from evit_deploy import api
    from evit_deploy.configs import parse_resolution

    weights, label = weights_named(args.weights)
    resolution = parse_resolution(args.resolution)
    conftest = _conftest()
    fp32_config, int8_config, always = RECIPES[args.target]
    options = {"min_agreement": args.min_agreement, "max_float_share": args.max_float_share, **always}
    with tempfile.TemporaryDirectory(prefix="evit-bench-int8-control-") as tmp_name:
        tmp = Path(tmp_name)
        calib = conftest._write_photos(tmp / "calib", conftest.CALIB_PHOTOS, 4)
        test = conftest._write_photos(tmp / "test", conftest.TEST_PHOTOS, 1)
        samples = 4 * len(conftest.CALIB_PHOTOS)
        artifacts: dict[str, Path] = {}
        plain = [("int8", int8_config, {"calib": calib, "calib_samples": samples})]
        for name, config, extra in ([("fp32", fp32_config, {})] if fp32_config else []) + plain:
            print(f"exporting {name}", flush=True)
            artifacts[name] = api.export(MODEL, target=args.target, config=config, weights=weights, out=tmp / name,
                                         resolution=resolution, options=always, **extra).artifact
        print("exporting int8 with accuracy control", flush=True)
        started = time.perf_counter()
        artifacts["int8_controlled"], failure = _export_controlled(args.target, weights, tmp / "controlled",
                                                                   resolution, calib, samples, options)
        control_s = time.perf_counter() - started
        from evit_deploy.manifest import load_manifest

        control = load_manifest(artifacts["int8_controlled"]).details["int8"]["accuracy_control"]
        checks = {}
        for name, path in artifacts.items():
            if args.target == "trt":
                checks[name] = _ort_agreement(path, weights, test)
            else:
                report = api.verify(path, images=test, threads=args.threads, record=False)
                checks[name] = {**report.task_metrics, "weights_rounded_alone": report.weight_rounding}
            print(f"{name}: {checks[name]}", flush=True)
        timing = interleaved({name: [path] for name, path in artifacts.items()}, rounds=args.rounds,
                             threads=args.threads, warmup=2, iters=args.iters) if fp32_config else {}
    p50 = {name: r["p50_ms"] for name, r in timing.items()}
    stem = "int8_control" + ("" if args.target == "tflite" else f"_{args.target}") + \
        ("_instrument" if args.weights == "instrument" else "") + args.suffix
    plot = plot_curve(control["steps"], args.min_agreement, RESULTS / f"{stem}.png")
    write_result(stem, {
        "model": MODEL,
        "target": args.target,
        "weights": label,
        "resolution": args.resolution,
        "min_agreement": args.min_agreement,
        "max_float_share": args.max_float_share,
        "met": control["met"],
        "failure": failure,
        "kept_float": control["kept_float"],
        "held_out": {"images": control["held_out_images"], "plain_int8": control["plain_int8_agreement"],
                     "controlled": control["agreement"]},
        "test_photos": checks,
        "p50_ms": p50,
        "speedup_vs_fp32": {name: p50["fp32"] / value for name, value in p50.items()} if p50 else None,
        "control_steps": control["steps"],
        "ranking_top": control["ranking"][:20],
        "controlled_export_seconds": round(control_s, 1),
        "plot": str(plot.relative_to(ROOT)),
        "calibration": f"{len(conftest.CALIB_PHOTOS)} calibration photos x 4 views ({samples} images; "
                       f"{control['held_out_images']} held out for the control's agreement)",
        "compared_on": f"{len(conftest.TEST_PHOTOS)} test photos: {', '.join(conftest.TEST_PHOTOS)}",
        "note": "measured on a shared 2-core machine: latency ratios from one interleaved run; the control's own "
                "ms per image is indicative only",
    })
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        raise SystemExit(main())
    raise SystemExit(max(main(run) for run in RUNS))
