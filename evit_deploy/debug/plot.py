"""Error against depth as a PNG: where the error appears, and which layers add it."""
from __future__ import annotations

import math
from pathlib import Path

from evit_deploy.debug.report import DebugReport
from evit_deploy.errors import RuntimeMissing

FLOOR = 1e-9  # log axes cannot show an exact zero


def plot_report(report: DebugReport, path: Path, *, label_top: int = 5) -> Path:
    """Relative L2 of every layer's output (inherited + own) and of the layer run alone, by depth;
    the threshold, the first layer over it and the largest added errors are marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeMissing("--plot needs matplotlib; pip install matplotlib") from None

    depth = list(range(len(report.layers)))
    carried = [_shown(layer.errors.rel_l2) for layer in report.layers]
    added = [(i, _shown(layer.added)) for i, layer in enumerate(report.layers) if layer.added is not None]
    fig, ax = plt.subplots(figsize=(12, 5), dpi=110)
    ax.plot(depth, carried, "-o", ms=3, lw=1.2, color="#1f77b4", label="output error (relative L2)")
    if added:
        ax.plot([i for i, _ in added], [v for _, v in added], "s", ms=3, color="#ff7f0e",
                label="added by the layer alone (reference inputs)")
    ax.axhline(report.threshold, color="#d62728", ls="--", lw=1, label=f"threshold {report.threshold:g}")
    first = report.first_divergent
    if first is not None:
        index = report.layers.index(first)
        ax.axvline(index, color="#d62728", lw=0.8, alpha=0.6)
        ax.annotate(f"first over: {first.module}", (index, carried[index]), xytext=(8, 12),
                    textcoords="offset points", fontsize=8, color="#d62728")
    for layer in report.top_added(label_top):
        index = report.layers.index(layer)
        ax.annotate(_short(layer.module), (index, _shown(layer.added)), xytext=(4, -10),
                    textcoords="offset points", fontsize=7, color="#ff7f0e", rotation=-20)
    ax.set_yscale("log")
    ax.set_xlabel("layer (depth order)")
    ax.set_ylabel("relative L2 error vs PyTorch")
    ax.set_title(f"{report.model} · {report.target} {report.precision} · {report.samples} sample(s)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


CEILING = 1e3  # an infinite error is drawn at the top


def _shown(value: float | None) -> float:
    if value is None or math.isnan(value):
        return math.nan
    return min(max(value, FLOOR), CEILING)


def _short(module: str) -> str:
    """``backbone.stages.3.op_list.1.context_module.main.qkv`` -> ``s3.1.context_module.main.qkv``."""
    return module.replace("backbone.stages.", "s").replace(".op_list.", ".") or "(model)"
