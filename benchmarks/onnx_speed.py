"""Our ONNX artifact on ONNX Runtime vs LiteRT vs PyTorch eager, 2 threads, against the compute floor (issue 19).

Models: seg-B1 Cityscapes at 512x1024, cls-B1 at 224x224 and 512x512 (the fixtures' seeded weights). Per
model every candidate is timed by ``evit profile`` in its own process, interleaved round by round
(harness.interleaved), and each figure is the median of its round p50s:

  onnx_fp32           the ONNX artifact as exported now: bicubic in its exact conv form, recorded session
  onnx_fp32_resize    the same export with ``--bicubic resize``: the graph before issue 19 (seg only)
  onnx_fp32_extended  the same file opened at ORT_ENABLE_EXTENDED (no NCHWc convolutions)
  onnx_fp32_spin      the same file with spinning pool threads (the recorded default is off)
  onnx_fp16           fp16 with fp32 attention/upsampling islands
  onnx_fp16_resize    the same with ``--bicubic resize`` (seg only)
  litert_fp32         the TFLite target's fp32 artifact on LiteRT (XNNPACK)
  torch_eager         the PyTorch module

The session variants share one graph file and differ only in the session settings their manifest
records (``details.runner``, and the recipe's options where it names them), which is what verify and
profile read, here and on devices.

Floor: FLOPs (``evit_deploy.complexity``: convolutions, linears and the attention's matmuls, FLOPs =
2 x MACs) over the fp32 GEMM rate measured on this CPU (_gemm_rate.py: ONNX Runtime's MatMul, 2048^3,
same thread count) before and after the timed rounds; every p50 is given as a multiple of it.
Per-op tables come from each runtime's own profiler (``evit profile --per-layer``).
Precision, cls-B1 512x512 (seed 71): ``verify`` with 16 samples on the fast (all) and accurate
(extended) sessions, side by side with their speed.

    python benchmarks/onnx_speed.py                  # writes benchmarks/results/onnx_speed.json
    python benchmarks/onnx_speed.py --models seg_b1_512x1024 --rounds 2
    python benchmarks/onnx_speed.py --only onnx_fp32_resize litert_fp32 --precision-samples 4   # the must-haves
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import ROOT, evit, interleaved, per_op, seeded_weights, write_result

sys.path.insert(0, str(ROOT))

# name -> (zoo model, weights key list, seed, resolution)
MODELS = {
    "seg_b1_512x1024": ("efficientvit-seg-b1-cityscapes", "efficientvit_seg_b1_cityscapes", 1234, "512x1024"),
    "cls_b1_224": ("efficientvit-b1-r224", "efficientvit_cls_b1", 71, "224x224"),
    "cls_b1_512": ("efficientvit-b1-r224", "efficientvit_cls_b1", 71, "512x512"),
}
TARGETS = {"seg_b1_512x1024": 1.0, "cls_b1_512": 1.1}  # ONNX fp32 / LiteRT fp32 at most (issue 19)
RATIOS = [("onnx_fp32", "litert_fp32"), ("onnx_fp32_resize", "onnx_fp32"), ("onnx_fp32_extended", "onnx_fp32"),
          ("onnx_fp32_spin", "onnx_fp32"), ("onnx_fp16", "onnx_fp32"), ("onnx_fp16_resize", "onnx_fp16"),
          ("torch_eager", "onnx_fp32")]
PROFILED = ("onnx_fp32_resize", "onnx_fp32", "litert_fp32")  # per-op tables: before, after, LiteRT


def gemm_rate(threads: int) -> float:
    """GFLOP/s of a large fp32 GEMM here, in its own process."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("_gemm_rate.py")), "--threads", str(threads)],
                         capture_output=True, text=True, check=True, timeout=600)
    return float(json.loads(out.stdout)["gflops"])


def gflop(model: str, resolution: str) -> float:
    from evit_deploy import zoo
    from evit_deploy.complexity import card_stats
    from evit_deploy.configs import parse_resolution

    return 2 * card_stats(zoo.get_card(model), parse_resolution(resolution))["macs"] / 1e9


def with_runner(artifact: Path, folder: Path, **settings: object) -> Path:
    """A copy of ``artifact`` whose manifest records other ONNX Runtime session settings."""
    folder.mkdir(parents=True)
    manifest = artifact.with_name(f"{artifact.stem}.evit.json")
    shutil.copy(artifact, folder / artifact.name)
    data = json.loads(manifest.read_text())
    data["details"]["runner"].update(settings)  # the runner section: what verify and profile open it with
    (folder / manifest.name).write_text(json.dumps(data, indent=2))
    return folder / artifact.name


def export_candidates(name: str, tmp: Path, only: set[str] | None) -> dict[str, list[object]]:
    """Every candidate of the module docstring that applies to ``name`` (those in ``only``, if given)."""
    model, keys, seed, resolution = MODELS[name]
    weights = seeded_weights(keys, seed)
    common = ["--resolution", resolution, *(["--weights", weights] if weights else []), "-q"]

    def export(label: str, *extra: object) -> Path:
        print(f"exporting {name} {label}", flush=True)
        return Path(evit("export", model, *common, "--out", tmp / label, *extra).strip())

    seg = name.startswith("seg")
    makers: dict[str, Any] = {
        "onnx_fp32": lambda: export("onnx_fp32", "--target", "onnx", "--config", "onnx-fp32"),
        "onnx_fp32_resize": (lambda: export("onnx_fp32_resize", "--target", "onnx", "--config", "onnx-fp32",
                                            "--bicubic", "resize")) if seg else None,
        "onnx_fp32_extended": lambda: with_runner(onnx_fp32, tmp / "extended", graph_optimization="extended"),
        "onnx_fp32_spin": lambda: with_runner(onnx_fp32, tmp / "spin", spinning=True),
        "onnx_fp16": lambda: export("onnx_fp16", "--target", "onnx", "--config", "onnx-fp16"),
        "onnx_fp16_resize": (lambda: export("onnx_fp16_resize", "--target", "onnx", "--config", "onnx-fp16",
                                            "--bicubic", "resize")) if seg else None,
        "litert_fp32": lambda: export("litert_fp32", "--target", "tflite", "--config", "tflite-fp32"),
        "torch_eager": lambda: model,
    }
    onnx_fp32 = makers["onnx_fp32"]()  # every other ONNX candidate is measured against it
    candidates: dict[str, list[object]] = {"onnx_fp32": [onnx_fp32]}
    for label, make in makers.items():
        if make is not None and label != "onnx_fp32" and (only is None or label in only):
            candidates[label] = [make()]
    if "torch_eager" in candidates:
        candidates["torch_eager"] += ["--target", "torch", "--resolution", resolution,
                                      *(["--weights", weights] if weights else [])]
    return candidates


def ort_graph(artifact: Path, folder: Path) -> dict[str, Any]:
    """What ONNX Runtime's ``all`` level made of the graph: fused and layout nodes, counted."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "ort-optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    nchwc = [n for n in nodes if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
    activation = [onnx.helper.get_attribute_value(a).decode() for n in nchwc for a in n.attribute
                  if a.name == "activation"]
    counts: dict[str, int] = {}
    for n in nodes:
        key = f"{n.domain + ':' if n.domain else ''}{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return {"nchwc_convs": len(nchwc),
            "with_fused_activation": {a: activation.count(a) for a in sorted(set(activation))},
            "with_fused_residual_add": sum(len(n.input) > 3 and bool(n.input[3]) for n in nchwc),
            "plain_convs": counts.get("Conv", 0) + counts.get("com.microsoft:FusedConv", 0),
            "fused_matmuls": counts.get("com.microsoft:FusedMatMul", 0),
            "layout_reorders": counts.get("com.microsoft.nchwc:ReorderInput", 0)
            + counts.get("com.microsoft.nchwc:ReorderOutput", 0),
            "op_counts": dict(sorted(counts.items()))}


def precision_side_by_side(artifacts: dict[str, list[object]], threads: int, samples: int) -> dict[str, Any]:
    """verify on the fast and the accurate session (cls-B1 512, seed 71: the case of issue 19), and every
    runtime's error against the same model in float64 on verify's inputs."""
    from evit_deploy import api

    out: dict[str, Any] = {}
    for label in ("onnx_fp32", "onnx_fp32_extended"):
        report = api.verify(artifacts[label][0], samples=samples, threads=threads, record=False)
        logits = report.outputs["logits"]
        out[label] = {"passed": report.passed, "max_rel": logits.max_rel, "cosine": logits.cosine,
                      "samples": report.samples, "graph_optimization": report.runner.get("graph_optimization"),
                      "excused": report.excused}
    out["max_rel_vs_float64"] = errors_against_float64(
        {label: artifacts[label][0] for label in ("onnx_fp32", "onnx_fp32_extended")}, threads, samples)
    return out


def errors_against_float64(artifacts: dict[str, Any], threads: int, samples: int) -> dict[str, Any]:
    """Per runtime, max|out - out64| / max|out64| over verify's random samples (seed 0): PyTorch fp32 and
    each artifact's recorded session, against the PyTorch model run in float64."""
    import copy

    import numpy as np
    import torch

    from evit_deploy.artifact import open_artifact
    from evit_deploy.data import input_batches
    from evit_deploy.pipeline.reference import reference_model

    handles = {label: open_artifact(path) for label, path in artifacts.items()}
    first = next(iter(handles.values()))
    model, _, _ = reference_model(first.manifest, None)
    model.eval()
    exact = copy.deepcopy(model).double()
    runners = {label: h.runner(threads=threads) for label, h in handles.items()}
    worst: dict[str, list[float]] = {label: [] for label in ["torch_fp32", *runners]}
    for runner in runners.values():
        runner.load()
    with torch.inference_mode():
        for image in input_batches(first.spec, samples=samples, seed=0):
            reference = exact(torch.from_numpy(image).double()).numpy()
            outputs = {"torch_fp32": model(torch.from_numpy(image)).numpy()}
            outputs.update({label: next(iter(r.run({r.inputs[0].name: image}).values()))
                            for label, r in runners.items()})
            for label, out in outputs.items():
                worst[label].append(float(np.abs(out - reference).max() / np.abs(reference).max()))
    return {label: {"max": max(errors), "worst_sample": int(np.argmax(errors)) + 1, "per_sample": errors}
            for label, errors in worst.items()}


def measure_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model, _, _, resolution = MODELS[name]
    only = set(args.only) if args.only else None
    candidates = export_candidates(name, tmp / name, only)
    results = interleaved(candidates, rounds=args.rounds, threads=args.threads, warmup=args.warmup,
                          iters=args.iters)
    p50 = {label: r["p50_ms"] for label, r in results.items()}
    ratios = {f"{a}_vs_{b}": p50[a] / p50[b] for a, b in RATIOS if a in p50 and b in p50}
    ratio = ratios.get("onnx_fp32_vs_litert_fp32")
    entry: dict[str, Any] = {
        "model": model, "resolution": resolution, "gflop": round(gflop(model, resolution), 3),
        "p50_ms": p50, "ratios": ratios,
        "target_onnx_vs_litert": TARGETS.get(name),
        "meets_target": (ratio <= TARGETS[name]) if name in TARGETS and ratio is not None else None,
        "results": results,
    }
    if not args.no_per_op:
        entry["per_op"] = {label: per_op(candidates[label][0], args.threads, 3)
                           for label in PROFILED if label in candidates}
    entry["ort_graph"] = {label: ort_graph(candidates[label][0], tmp / name / label)
                          for label in ("onnx_fp32_resize", "onnx_fp32") if label in candidates}
    if name == "cls_b1_512" and args.precision_samples:
        if "onnx_fp32_extended" not in candidates:
            candidates["onnx_fp32_extended"] = [with_runner(candidates["onnx_fp32"][0], tmp / name / "extended",
                                                            graph_optimization="extended")]
        entry["precision"] = precision_side_by_side(candidates, args.threads, args.precision_samples)
    return entry


def findings(models: dict[str, Any], rates: list[float]) -> list[str]:
    notes = [(f"compute floor: FLOPs / {max(rates):.0f} GFLOP/s, the best of the GEMM rates measured before and "
              f"after the timed rounds ({', '.join(f'{r:.0f}' for r in rates)} GFLOP/s)")]
    described = {"onnx_fp32_resize_vs_onnx_fp32": "ORT's Resize instead of the exact bicubic form (fp32)",
                 "onnx_fp16_resize_vs_onnx_fp16": "the same in fp16",
                 "onnx_fp32_extended_vs_onnx_fp32": "without NCHWc (extended)",
                 "onnx_fp32_spin_vs_onnx_fp32": "spinning", "onnx_fp16_vs_onnx_fp32": "fp16",
                 "torch_eager_vs_onnx_fp32": "PyTorch eager"}
    for name, m in models.items():
        r, p50, floor = m["ratios"], m["p50_ms"], m["vs_floor"]
        line = (f"{name}: ONNX fp32 {p50['onnx_fp32']:.1f} ms = {floor['onnx_fp32']:.2f}x the floor "
                f"({m['floor_ms']:.1f} ms for {m['gflop']:.2f} GFLOP)")
        if "litert_fp32" in p50:
            line += (f"; LiteRT fp32 {p50['litert_fp32']:.1f} ms = {floor['litert_fp32']:.2f}x; "
                     f"ONNX/LiteRT {r['onnx_fp32_vs_litert_fp32']:.2f}")
        line += "".join(f"; {text} {r[key]:.2f}x ONNX fp32's time" for key, text in described.items() if key in r)
        notes.append(line)
        precision = m.get("precision")
        if precision:
            errors = precision["max_rel_vs_float64"]
            notes.append(f"{name}: max_rel against float64 over {precision['onnx_fp32']['samples']} samples: "
                         + ", ".join(f"{label} {e['max']:.2g} (worst sample {e['worst_sample']})"
                                     for label, e in errors.items())
                         + f"; verify passes: all {precision['onnx_fp32']['passed']} "
                         f"(excused {[e['tokens'] for e in precision['onnx_fp32']['excused']]}), "
                         f"extended {precision['onnx_fp32_extended']['passed']}")
        fused = m["ort_graph"]["onnx_fp32"]
        notes.append(f"{name}: ORT made {fused['nchwc_convs']} NCHWc convs ({fused['with_fused_activation']} with a fused "
                     f"activation, {fused['with_fused_residual_add']} with the residual Add fused), "
                     f"{fused['fused_matmuls']} FusedMatMul (Transpose folded), {fused['layout_reorders']} layout "
                     f"reorders, {fused['plain_convs']} convs outside NCHWc")
        ops = m.get("per_op", {})
        if "onnx_fp32_resize" in ops and "onnx_fp32" in ops:
            resize = next((o for o in ops["onnx_fp32_resize"]["by_op_type"] if o["op"] == "Resize"), None)
            if resize:
                notes.append(f"{name}: before, ORT's Resize took {resize['ms']:.1f} ms per run "
                             f"({resize['share']:.0%} of op time); after, the top op types are "
                             + ", ".join(f"{o['op']} {o['share']:.0%}" for o in ops["onnx_fp32"]["by_op_type"][:4]))
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-per-op", action="store_true", help="skip the per-op profiles")
    parser.add_argument("--precision-samples", type=int, default=16,
                        help="verify samples on cls-B1 512, fast and accurate session (0: skip)")
    parser.add_argument("--only", nargs="+", metavar="CANDIDATE",
                        help="time only these candidates besides onnx_fp32 (see above)")
    parser.add_argument("--note", default="", help="a line on the conditions of this run (e.g. a shared machine)")
    args = parser.parse_args(argv)

    rates = [gemm_rate(args.threads)]
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="evit-bench-onnx-") as tmp:
        for name in args.models:
            models[name] = measure_model(name, args, Path(tmp))
    rates.append(gemm_rate(args.threads))
    for m in models.values():  # the floor: the best GEMM rate seen in the run
        m["floor_ms"] = round(m["gflop"] / max(rates) * 1e3, 2)
        m["vs_floor"] = {label: ms / m["floor_ms"] for label, ms in m["p50_ms"].items()}
    write_result("onnx_speed", {
        "threads": args.threads, "rounds": args.rounds, "iters_per_round": args.iters,
        "weights": "fixtures' seeded trained-looking weights (seg seed 1234, cls seed 71)",
        "conditions": args.note or "as run by make bench",
        "gemm_gflops": {"before": rates[0], "after": rates[1],
                        "how": "ONNX Runtime MatMul 2048^3 fp32, best of 8, own process, same threads"},
        "flops": "evit_deploy.complexity (FlopCounterMode: convs, linears, attention matmuls), FLOPs = 2 x MACs",
        "models": models,
        "findings": findings(models, rates),
    })
    print(json.dumps({name: {"p50_ms": m["p50_ms"], "ratios": m["ratios"]} for name, m in models.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
