"""The overlay PNG: the slice it picks, radiological orientation, one colour per structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hiend_eval.overlay import COLOURS, _best_slices, draw_overlay


def test_best_slices_pick_the_slice_with_most_structures() -> None:
    ref = np.zeros((20, 16, 10), dtype=np.uint8)
    ref[2:6, 2:6, 3] = 1
    ref[10:14, 8:12, 6] = 1
    ref[4:8, 8:12, 6] = 2  # slice 6 holds two structures, slice 3 one
    z, y = _best_slices(ref, np.zeros_like(ref))
    assert z == 6 and 2 <= y <= 11


def test_overlay_draws_each_structure_in_its_colour(tmp_path: Path) -> None:
    from matplotlib.image import imread

    image = np.full((40, 30, 12), -100.0, dtype=np.float32)
    ref = np.zeros(image.shape, dtype=np.uint8)
    ref[5:15, 5:15, 3:9] = 1  # patient's left (low x): drawn on the image's right
    ref[25:35, 10:20, 3:9] = 2
    pred = ref.copy()
    out = draw_overlay(
        image, pred, ref, {1: "liver", 2: "spleen"}, (1.0, 1.0, 2.0), tmp_path / "o.png", title="t"
    )
    png = imread(out)[..., :3]
    assert png.shape[0] == 620 and png.shape[1] == 1200  # 12 x 6.2 in at 100 dpi

    def has(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return int((np.abs(png - rgb).sum(axis=-1) < 0.08).sum())

    assert has(COLOURS[0]) > 50 and has(COLOURS[1]) > 50 and has(COLOURS[2]) == 0
    # radiological convention: structure 1 (low x, the patient's left) lies right of structure 2
    axial = png[:540, :600]  # the axial view, above the legend
    cols = {
        k: np.nonzero(
            (
                np.abs(axial - np.array([int(COLOURS[k][i : i + 2], 16) / 255 for i in (1, 3, 5)])).sum(-1)
                < 0.08
            ).any(0)
        )[0].mean()
        for k in (0, 1)
    }
    assert cols[0] > cols[1]
