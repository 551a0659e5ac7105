"""Shared benchmark plumbing: every figure is a ratio measured in one run.

Each runtime is timed by ``evit profile`` in its own process (so one runtime's threads,
allocator and caches never colour another's), candidates are interleaved round by round
(this VM's speed drifts and is bimodal), and the reported figure is the median of the
per-round p50s.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("EVIT_SHARED", ROOT.parent / "shared"))
EVIT = [sys.executable, "-m", "evit_deploy.cli"]


def evit(*args: object, timeout: float = 1800) -> str:
    """Run the evit CLI in a fresh process and return its stdout (raises with its stderr on failure)."""
    proc = subprocess.run([*EVIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"evit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def seeded_weights(builder: str, seed: int = 1234) -> Path | None:
    """Trained-looking weights from the team's fixtures (None when shared/ is absent)."""
    script = SHARED / "reference" / "fixtures" / "seeded_weights.py"
    keys = SHARED / "reference" / "state_dict_keys" / f"{builder}.txt"
    if not script.is_file() or not keys.is_file():
        return None
    path = RESULTS.parent / ".cache" / f"{builder}-{seed}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = importlib.util.spec_from_file_location("seeded_weights", script)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader
        spec.loader.exec_module(module)
        module.save(module.state_dict(keys, seed), path)
    return path


def profile_once(target: Sequence[object], threads: int, warmup: int, iters: int) -> dict[str, Any]:
    """One ``evit profile`` in its own process; ``target`` is an artifact or [model, --target, torch, ...]."""
    out = evit("profile", *target, "--threads", threads, "--warmup", warmup, "--iters", iters, "--json", "-")
    return json.loads(out)


def interleaved(candidates: dict[str, Sequence[object]], *, rounds: int, threads: int, warmup: int,
                iters: int) -> dict[str, dict[str, Any]]:
    """Round-robin every candidate ``rounds`` times; per candidate the median of its round p50s."""
    p50s: dict[str, list[float]] = {name: [] for name in candidates}
    last: dict[str, dict[str, Any]] = {}
    for round_index in range(rounds):
        order = list(candidates) if round_index % 2 == 0 else list(reversed(candidates))
        for name in order:
            result = profile_once(candidates[name], threads, warmup, iters)
            p50s[name].append(result["latency_ms"]["p50"])
            last[name] = result
            print(f"  round {round_index + 1}/{rounds} {name}: p50 {p50s[name][-1]:.1f} ms", flush=True)
    return {name: {"p50_ms": statistics.median(values), "round_p50s_ms": values,
                   "peak_rss_mb": last[name]["peak_rss_mb"], "runner": last[name]["runner"]}
            for name, values in p50s.items()}


def per_op(artifact: Path, threads: int, iters: int, top: int = 12) -> dict[str, Any]:
    """The runtime's own op profile (``evit profile --per-layer``, its own process) summed per operator
    type: ms per run and share of the summed op time, plus the ``top`` slowest nodes."""
    data = json.loads(evit("profile", artifact, "--per-layer", "--threads", threads, "--warmup", 1,
                           "--iters", iters, "--json", "-"))
    by_type: dict[str, float] = {}
    for row in data["per_layer"]:
        by_type[row["op_type"]] = by_type.get(row["op_type"], 0.0) + row["total_ms"]
    whole = sum(by_type.values()) or 1.0
    ranked = sorted(by_type.items(), key=lambda kv: kv[1], reverse=True)
    return {"op_ms_per_run": round(whole, 2),
            "by_op_type": [{"op": op, "ms": round(ms, 2), "share": round(ms / whole, 3)} for op, ms in ranked[:top]],
            "top_nodes": [{"node": row["name"], "op": row["op_type"], "ms": round(row["total_ms"], 2)}
                          for row in data["per_layer"][:top]]}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()}, **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
