"""Pre-training previews: a PNG of the middle slice of input, masked input and reconstruction.

Needs matplotlib (``pip install 'hiend-train[preview]'``); without it :func:`write_preview` returns
None and writes nothing. The PNG is written atomically (:func:`hiend_data.atomic.atomic_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hiend_data.atomic import atomic_path

from .outputs import writing

if TYPE_CHECKING:
    import numpy as np

    from hiend_model import HiEndMAE


@torch.no_grad()
def preview_slices(
    model: HiEndMAE, images: torch.Tensor, noise: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """images [1, C, H, W, D], noise [1, L] -> (input, masked input, reconstruction) middle slices along
    the last axis (channel 0, [H, W] numpy float32) and the masked-patch loss."""
    was_training = model.training
    model.eval()
    out = model(images, noise)
    masked, recon = model.reconstruct(images, out)
    model.train(was_training)
    z = images.shape[-1] // 2
    pick = [t[0, 0, :, :, z].float().cpu().numpy() for t in (images, masked, recon)]
    return pick[0], pick[1], pick[2], float(out.loss)


def write_preview(
    model: HiEndMAE, images: torch.Tensor, noise: torch.Tensor, path: str | Path, title: str = ""
) -> Path | None:
    """Write the three slices side by side to ``path`` (PNG, atomically: whole or not at all, parent folders
    created); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    image, masked, recon, loss = preview_slices(model, images, noise)
    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    lo, hi = float(image.min()), float(image.max())
    for ax, arr, name in zip(
        axes, (image, masked, recon), ("input", "masked input", "reconstruction"), strict=True
    ):
        ax.imshow(arr.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title}  masked-patch loss {loss:.4f}".strip())
    fig.tight_layout()
    try:
        with writing(path), atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
    return path
