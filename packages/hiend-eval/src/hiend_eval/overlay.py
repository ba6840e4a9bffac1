"""A PNG of a scan with the outlines of a prediction and of its reference, axial and coronal.

:func:`draw_overlay` takes arrays already in RAS order (``[X, Y, Z]``: x towards the patient's right,
y anterior, z superior) and shows them the way radiologists read CT: the patient's right on the
image's left, anterior at the top of the axial view, superior at the top of the coronal view, with the
true aspect ratio of the voxels. Each structure has one colour; the prediction is a solid line, the
reference a dashed one; the legend names the structures. Needs matplotlib (``hiend-eval[plot]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .plot import plain

COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#42d4f4", "#f032e6", "#bfef45"]


def _best_slices(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Axial index with the most structures (then most labelled voxels) and the coronal index through
    the middle of the labelled voxels' centre."""
    both = np.where(ref > 0, ref, pred)
    per_z = [(len(np.unique(both[:, :, k])), int((both[:, :, k] > 0).sum())) for k in range(both.shape[2])]
    z = int(max(range(len(per_z)), key=lambda k: per_z[k]))
    idx = np.argwhere(both > 0)
    y = int(np.median(idx[:, 1])) if len(idx) else both.shape[1] // 2
    return z, y


def draw_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    ref: np.ndarray | None,
    names: Mapping[int, str],
    spacing: tuple[float, float, float],
    path: str | Path,
    title: str = "",
    window: tuple[float, float] = (-160.0, 240.0),
) -> Path:
    """Write ``path`` (PNG): axial and coronal views of ``image`` (HU, RAS ``[X, Y, Z]``) with the
    outlines of ``pred`` (solid) and ``ref`` (dashed, optional) for each label of ``names``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ref_ = ref if ref is not None else np.zeros_like(pred)
    z, y = _best_slices(ref_, pred)
    sx, sy, sz = spacing
    views = [
        ("axial", image[::-1, ::-1, z].T, pred[::-1, ::-1, z].T, ref_[::-1, ::-1, z].T, sy / sx),
        ("coronal", image[::-1, y, ::-1].T, pred[::-1, y, ::-1].T, ref_[::-1, y, ::-1].T, sz / sx),
    ]
    fig = Figure(figsize=(12, 6.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    values = sorted(int(v) for v in names if int(v) > 0)
    for ax, (view, img, p, r, aspect) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        for i, v in enumerate(values):
            colour = COLOURS[i % len(COLOURS)]
            for mask, style in ((p == v, "solid"), (r == v, "dashed")):
                if mask.any():
                    ax.contour(
                        mask.astype(np.float32),
                        levels=[0.5],
                        colors=[colour],
                        linewidths=1.2,
                        linestyles=style,
                    )
        ax.set_title(f"{view} ({'z' if view == 'axial' else 'y'} index {z if view == 'axial' else y})")
        ax.text(0.01, 0.5, "R", color="w", transform=ax.transAxes, fontsize=11, va="center")
        ax.set_axis_off()
    handles = [
        Line2D([], [], color=COLOURS[i % len(COLOURS)], lw=2, label=plain(names[v]))
        for i, v in enumerate(values)
    ]
    handles += [
        Line2D([], [], color="k", lw=1.2, ls="solid", label="model"),
        Line2D([], [], color="k", lw=1.2, ls="dashed", label="reference"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.14, wspace=0.03)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
