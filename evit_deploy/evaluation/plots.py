"""The confusion matrix as a PNG (matplotlib, imported only when a plot is asked for)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evit_deploy.errors import RuntimeMissing
from evit_deploy.evaluation.evaluate import EvalResult
from evit_deploy.manifest import save_figure_atomic

MAX_CLASSES_SHOWN = 40  # beyond this the labels are unreadable: the most frequent classes are kept


def shown_classes(confusion: np.ndarray, limit: int = MAX_CLASSES_SHOWN) -> list[int]:
    """Classes that occur in the labels or the predictions, the most frequent first when over ``limit``."""
    weight = confusion.sum(axis=0) + confusion.sum(axis=1)
    present = [int(i) for i in np.flatnonzero(weight)]
    if len(present) > limit:
        present = sorted(sorted(present, key=lambda i: -weight[i])[:limit])
    return present


def write_confusion_png(result: EvalResult, path: Path) -> None:
    """Row-normalised confusion matrices (rows: label, columns: prediction), one panel per runner.

    Written to a temporary sibling first and moved into place, so an interrupted run never leaves a
    half-written PNG.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeMissing("--confusion needs matplotlib: pip install matplotlib") from None
    panels = [(name, scores.confusion) for name, scores in (("PyTorch", result.reference),
                                                            (Path(result.source).name, result.artifact))
              if scores is not None]
    keep = shown_classes(sum(c for _, c in panels))
    names = [result.classes[i] for i in keep]
    size = max(4.0, 0.28 * len(keep) + 2.5)
    figure, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for axis, (title, confusion) in zip(axes[0], panels):
        counts = confusion[np.ix_(keep, keep)].astype(np.float64)
        rows = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        image = axis.imshow(shares, cmap="viridis", vmin=0.0, vmax=1.0)
        axis.set_title(title)
        axis.set_xlabel("prediction")
        axis.set_ylabel("label")
        axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the label's pixels/images")
    omitted = len(result.classes) - len(keep)
    suffix = f" ({omitted} classes not shown)" if omitted else ""
    figure.suptitle(f"{result.model} · {result.format}: {result.images} image(s){suffix}")
    figure.tight_layout()
    try:
        save_figure_atomic(figure, path)
    finally:
        plt.close(figure)
