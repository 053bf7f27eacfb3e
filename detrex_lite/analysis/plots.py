"""Figures of the analysis tools (matplotlib, Agg backend: no display needed)."""
from typing import List, Optional, Sequence

import numpy as np

from .error_analysis import AREAS, ERROR_TYPES, ErrorAnalysis

# Bottom (C75) to top (FN) of the stacked PR plot.
ERROR_COLORS = ("#1f4e79", "#4a90c8", "#f0a030", "#9b6fc1", "#5fb760", "#d65f5f", "#cfcfcf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pr_panel(ax, recall: np.ndarray, curves: np.ndarray, aps: np.ndarray, title: str, num_gt: int) -> None:
    """curves: (7, R) precision of the error types; aps: (7,) AP %."""
    ax.set_title(f"{title}  ({num_gt} object{'' if num_gt == 1 else 's'})", fontsize=10)
    if np.isnan(curves).all():
        ax.text(0.5, 0.5, "no objects of this size", ha="center", va="center", fontsize=10, color="0.4",
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    lower = np.zeros_like(recall)
    for t, name in enumerate(ERROR_TYPES):
        upper = np.maximum(curves[t], lower)  # guard against float noise in the stacking
        ax.fill_between(recall, lower, upper, color=ERROR_COLORS[t], label=f"{name}: {aps[t]:.1f}",
                        linewidth=0, step=None)
        ax.plot(recall, upper, color="black", linewidth=0.4)
        lower = upper
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("recall", fontsize=9)
    ax.set_ylabel("precision", fontsize=9)
    ax.tick_params(labelsize=8)
    # Reverse order so that the legend reads top-down like the stack (FN on top).
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
              title="AP if fixed", title_fontsize=8, frameon=False)


def plot_error_analysis(analysis: ErrorAnalysis, path: str, class_index: Optional[int] = None,
                        areas: Sequence[str] = AREAS, dpi: int = 100) -> str:
    """Stacked PR curves (C75 at the bottom ... FN on top), one panel per object size.

    Args:
        class_index: a class (index into analysis.class_names) or None for the class average.
        areas: which of "all", "small", "medium", "large" to draw (one panel each).
    """
    plt = _pyplot()
    if class_index is None:
        curves, aps = analysis.overall_curves(), analysis.overall_ap()
        num_gt, name = analysis.num_gt.sum(axis=0), "all classes"
    else:
        curves, aps = analysis.precision[:, :, class_index], analysis.ap()[:, class_index]
        num_gt, name = analysis.num_gt[class_index], analysis.class_names[class_index]
    columns = 2 if len(areas) > 1 else 1
    rows = (len(areas) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, 3.6 * rows), dpi=dpi, squeeze=False)
    for ax, area in zip(axes.flat, areas):
        a = AREAS.index(area)
        _pr_panel(ax, analysis.recall, curves[:, :, a], aps[:, a], f"{name}, {area}", int(num_gt[a]))
    skipped = [a for a in AREAS if a not in areas]
    for i, ax in enumerate(list(axes.flat)[len(areas):]):
        ax.axis("off")
        if i == 0 and skipped:
            ax.text(0.05, 0.5, f"no {' or '.join(skipped)} objects\n(COCO: small < 32x32 <= medium < 96x96 <= large)",
                    fontsize=9, color="0.4", transform=ax.transAxes, va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, names: List[str], path: str, iou: float, score_threshold: float,
                          dpi: int = 100) -> str:
    """The confusion matrix as a heat map, colour = share of the row (ground-truth class),
    text = counts. Rows: ground truth (+ background = false detections); columns: predictions
    (+ background = missed objects)."""
    plt = _pyplot()
    k = len(names)
    row_sums = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, dtype=np.float64), where=row_sums > 0)
    size = max(4.5, 0.55 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=dpi)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = 9 if k <= 12 else 7 if k <= 30 else 5
    for i in range(k):
        for j in range(k):
            if matrix[i, j] == 0 and (i != j or i == k - 1):
                continue
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.set_xlabel("predicted class (background = object missed)", fontsize=9)
    ax.set_ylabel("ground-truth class (background = false detection)", fontsize=9)
    ax.set_title(f"confusion at IoU {iou:g}, score >= {score_threshold:.3g}", fontsize=10)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of the row", fontsize=8)
    cbar.ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
