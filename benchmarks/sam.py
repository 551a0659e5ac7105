"""EfficientViT-SAM-L0 on ONNX Runtime vs PyTorch eager: the image encoder (one 512x512 image) and the
prompt decoder (one click; 16 clicks in one batch), as ratios measured in one interleaved run.

The TFLite encoder (fp32 and int8) joins the same run when the tflite target exports SAM's encoder
(the SAM-targets work, issue 16): until then its row says why it was skipped, so the figures stay
comparable once it lands. Writes benchmarks/results/sam.json.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from harness import evit, interleaved, seeded_weights, write_result

MODEL = "efficientvit-sam-l0"
# decoder prompt batches: (prompts B, points N) -- one click (a click and its padding point), 16 clicks
DECODER_SIZES = {"click": (1, 2), "16_clicks": (16, 2)}
TFLITE = {"tflite_fp32": ["--precision", "fp32"], "tflite_int8": ["--precision", "int8"]}


def _tflite_encoders(common: list[Any], folder: Path, calib: Path | None) -> tuple[dict[str, list[Any]],
                                                                                    dict[str, str]]:
    """The TFLite encoders this checkout can export, and why the others were skipped (the hook for the
    SAM-targets work: nothing here changes when it lands)."""
    made: dict[str, list[Any]] = {}
    skipped: dict[str, str] = {}
    for name, extra in TFLITE.items():
        if "int8" in name and calib is None:
            skipped[name] = "no calibration photos (scikit-image missing)"
            continue
        calib_args = ["--calib", calib, "--calib-samples", "4"] if "int8" in name else []
        try:
            evit("export", MODEL, *common, "--target", "tflite", "--graph", "encoder", *extra, *calib_args,
                 "--out", folder / name, "-q")
        except RuntimeError as err:
            skipped[name] = str(err).splitlines()[-1][:300]
            continue
        made[name] = [folder / name / f"{MODEL}.encoder.tflite"]
    return made, skipped


def _calibration_photos(folder: Path) -> Path | None:
    try:
        from skimage import data
    except ImportError:
        return None
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "rocket", "chelsea"):
        Image.fromarray(getattr(data, name)()[..., :3]).save(folder / f"{name}.png")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite encoder rows")
    args = parser.parse_args(argv)

    weights = seeded_weights("efficientvit_sam_l0")
    common: list[Any] = ["--weights", weights] if weights else []
    with tempfile.TemporaryDirectory(prefix="evit-bench-sam-") as tmp:
        folder = Path(tmp)
        print("exporting the ONNX encoder and (dynamic) decoder", flush=True)
        evit("export", MODEL, *common, "--target", "onnx", "--dynamic", "--out", folder / "onnx", "-q")
        encoder, decoder = folder / "onnx" / f"{MODEL}.encoder.onnx", folder / "onnx" / f"{MODEL}.decoder.onnx"
        eager = [MODEL, "--target", "torch", *common]
        candidates: dict[str, list[Any]] = {"encoder_torch": [*eager, "--graph", "encoder"],
                                            "encoder_ort": [encoder]}
        for name, (prompts, points) in DECODER_SIZES.items():
            dims = f"num_prompts={prompts},num_points={points}"
            candidates[f"decoder_{name}_torch"] = [*eager, "--graph", "decoder", "--dims", dims]
            candidates[f"decoder_{name}_ort"] = [decoder, "--dims", dims]
        skipped: dict[str, str] = {"tflite_fp32": "--no-tflite", "tflite_int8": "--no-tflite"}
        if not args.no_tflite:
            tflite, skipped = _tflite_encoders(common, folder, _calibration_photos(folder / "calib"))
            candidates |= {f"encoder_{name}": path for name, path in tflite.items()}
        results = interleaved(candidates, rounds=args.rounds, threads=args.threads, warmup=args.warmup,
                              iters=args.iters)
    p50 = {name: r["p50_ms"] for name, r in results.items()}
    speedups = {"encoder_ort_vs_eager": p50["encoder_torch"] / p50["encoder_ort"]}
    for name in DECODER_SIZES:
        speedups[f"decoder_{name}_ort_vs_eager"] = p50[f"decoder_{name}_torch"] / p50[f"decoder_{name}_ort"]
    for name in TFLITE:
        if f"encoder_{name}" in p50:
            speedups[f"encoder_{name}_vs_eager"] = p50["encoder_torch"] / p50[f"encoder_{name}"]
    write_result("sam", {
        "model": MODEL,
        "threads": args.threads,
        "rounds": args.rounds,
        "iters_per_round": args.iters,
        "weights": "fixtures' seeded trained-looking weights" if weights else "random init",
        "decoder_sizes": {name: {"num_prompts": b, "num_points": n} for name, (b, n) in DECODER_SIZES.items()},
        "results": results,
        "speedups": speedups,
        "skipped": {name: why for name, why in skipped.items() if f"encoder_{name}" not in p50},
    })
    for name, value in speedups.items():
        print(f"{name}: {value:.2f}x")


if __name__ == "__main__":
    main()
