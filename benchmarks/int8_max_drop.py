"""``--max-drop D --data DIR`` on the trained instrument: TFLite int8 held to mIoU on labelled photos.

The instrument (``instrument.py``) was fitted to colour-region labels of the packaged photos, so
those labels are a labelled set it scores well on, as a user's model on their validation data.
Its 6 test photos (4 views each, labels made the instrument's way from each view) are split:
the first 3 photos are ``--data`` (what the control scores candidates on), the other 3 check the
result on photos the control never saw. Ranges are calibrated on the 7 calibration photos x 4
views, as in the other int8 benchmarks. Artifacts: fp32, plain int8 and one controlled export
per ``--max-drop``; each is scored with ``evit eval`` on both halves (mIoU, PyTorch beside it)
and timed round-robin in one run (ratios to fp32).

    python benchmarks/int8_max_drop.py                    # --max-drop 0.5 and 0.25
    python benchmarks/int8_max_drop.py --max-drop 1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, interleaved, write_result

sys.path.insert(0, str(ROOT))

MODEL = "efficientvit-seg-b1-cityscapes"
VIEWS = 4


def labelled_set(folder: Path, names: tuple[str, ...], centres: np.ndarray, radius: int) -> Path:
    """``folder`` in the masks layout: each photo's views, labelled as the instrument was trained."""
    import yaml
    from instrument import _conftest, pseudo_labels
    from PIL import Image

    from evit_deploy import zoo

    conftest = _conftest()
    images = conftest._write_photos(folder / "images", names, VIEWS)
    (folder / "labels").mkdir()
    for image in sorted(images.glob("*.png")):
        pixels = np.asarray(Image.open(image).convert("RGB"))
        Image.fromarray(pseudo_labels(pixels, centres, radius)).save(folder / "labels" / image.name)
    classes = list(zoo.get_card(MODEL).classes)
    (folder / "classes.yaml").write_text(yaml.safe_dump({"classes": classes, "ignore_index": 255}))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-drop", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--max-float-share", type=float, default=0.25)
    parser.add_argument("--weights", default="instrument", help="instrument, or a checkpoint of it (a snapshot)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)

    from instrument import RECIPE, _conftest, fit_centres, photos, weights_named

    from evit_deploy import api
    from evit_deploy.configs import parse_resolution
    from evit_deploy.errors import CheckFailed
    from evit_deploy.evaluation import evaluate
    from evit_deploy.manifest import load_manifest

    (weights, label), resolution = weights_named(args.weights), parse_resolution(args.resolution)
    conftest = _conftest()
    everything = photos(conftest.CALIB_PHOTOS + conftest.TEST_PHOTOS)
    centres = fit_centres(list(everything.values()), RECIPE["clusters"], RECIPE["seed"])
    tuned_on, checked_on = conftest.TEST_PHOTOS[:3], conftest.TEST_PHOTOS[3:]
    common = {"target": "tflite", "weights": weights, "resolution": resolution}
    with tempfile.TemporaryDirectory(prefix="evit-bench-max-drop-") as tmp_name:
        tmp = Path(tmp_name)
        calib = conftest._write_photos(tmp / "calib", conftest.CALIB_PHOTOS, VIEWS)
        samples = VIEWS * len(conftest.CALIB_PHOTOS)
        data = labelled_set(tmp / "data", tuned_on, centres, RECIPE["modal_radius"])
        check = labelled_set(tmp / "check", checked_on, centres, RECIPE["modal_radius"])
        int8 = {"calib": calib, "calib_samples": samples}
        artifacts = {"fp32": api.export(MODEL, config="tflite-fp32", out=tmp / "fp32", **common).artifact,
                     "int8": api.export(MODEL, config="tflite-int8", out=tmp / "int8", **common, **int8).artifact}
        controls: dict[str, dict[str, Any]] = {}
        for drop in args.max_drop:
            name = f"int8 --max-drop {drop:g}"
            print(f"exporting {name}", flush=True)
            started = time.perf_counter()
            try:
                artifacts[name] = api.export(
                    MODEL, config="tflite-int8", out=tmp / f"drop{drop:g}", **common, **int8, data=data,
                    options={"max_drop": drop, "max_float_share": args.max_float_share},
                    progress=lambda message: print(f"  {message}", flush=True)).artifact
            except CheckFailed:
                (artifacts[name],) = (tmp / f"drop{drop:g}").glob("*.over-max-drop.tflite")
            control = load_manifest(artifacts[name]).details["int8"]["accuracy_control"]
            controls[name] = {"met": control["met"], "kept_float": control["kept_float"],
                              "pytorch_miou": control["pytorch"], "plain_int8_drop_points": 100 * control["plain_int8_drop"],
                              "drop_points": 100 * control["drop"], "steps": control["steps"],
                              "export_seconds": round(time.perf_counter() - started, 1)}
        scores: dict[str, dict[str, Any]] = {}
        for name, path in artifacts.items():
            scores[name] = {}
            for half, folder in (("tuned_on", data), ("checked_on", check)):
                result = evaluate(path, folder, threads=args.threads)
                assert result.reference is not None and result.artifact is not None
                scores[name][half] = {"pytorch_miou": result.reference.metrics["miou"],
                                      "miou": result.artifact.metrics["miou"], "drop_points": result.drop}
            print(f"{name}: {scores[name]}", flush=True)
        timing = interleaved({name: [path] for name, path in artifacts.items()}, rounds=args.rounds,
                             threads=args.threads, warmup=2, iters=args.iters)
    p50 = {name: r["p50_ms"] for name, r in timing.items()}
    write_result("int8_max_drop_instrument" if args.weights == "instrument" else "int8_max_drop_trial", {
        "model": MODEL,
        "target": "tflite",
        "weights": label,
        "resolution": args.resolution,
        "max_float_share": args.max_float_share,
        "data": f"{len(tuned_on)} test photos x {VIEWS} views ({', '.join(tuned_on)}), the instrument's colour-region "
                "labels: what --data held the control to",
        "check": f"{len(checked_on)} other test photos x {VIEWS} views ({', '.join(checked_on)}), never seen by "
                 "calibration or control",
        "calibration": f"{len(conftest.CALIB_PHOTOS)} calibration photos x {VIEWS} views ({samples} images)",
        "controls": controls,
        "eval": scores,
        "p50_ms": p50,
        "speedup_vs_fp32": {name: p50["fp32"] / value for name, value in p50.items()},
        "results": timing,
        "note": "mIoU in points (evit eval); drop: PyTorch's mIoU less the artifact's on the same images; "
                "speeds are ratios of one interleaved run on a shared 2-core machine",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
