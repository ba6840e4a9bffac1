"""One case: read its two label maps, check them, put them on one grid, and score every label.

:func:`score_case` reads the reference and the prediction (a missing prediction is an empty map),
refuses anything but whole-number label values (hiend-data's one rule), requires one grid (shape, and
affine within :data:`GEOMETRY_ATOL`) unless a DICOM-SEG's partial grid can be placed on the reference's
without interpolation or ``resample_to_reference`` asks for nearest-neighbour resampling, and scores
every label with :func:`hiend_eval.labelmaps.score_label_maps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hiend_data.errors import InputError
from hiend_data.io import label_array

from .labelmaps import c_order, label_boxes, present_values, score_label_maps
from .matching import CasePair, is_seg_name

GEOMETRY_ATOL = 1e-4  # mm (affine entries), the same tolerance as hiend-data's grid check


def _as_label_map(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map (smallest unsigned type) or InputError naming ``path``: hiend-data's one rule
    (:func:`hiend_data.io.label_array`: whole numbers 0..65535, nothing that a cast would wrap)."""
    return label_array(array, path)


def _common_block(
    pred: np.ndarray, pred_affine: np.ndarray, ref: np.ndarray, ref_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Both maps on one grid without interpolation when one is a DICOM-SEG, whose grid spans only the
    slices its frames cover: the reference's grid grown to cover the prediction's, when the two grids
    are blocks of one lattice (:func:`hiend_data.geometry.union_grid`); None otherwise. The grid keeps
    the reference's spacing and axis order, so the distances are the reference's."""
    from hiend_data.geometry import place_on_grid, union_grid

    grid = union_grid(ref_affine, ref.shape, pred_affine, pred.shape)
    if grid is None:
        return None
    affine, shape = grid
    placed = place_on_grid(pred, pred_affine, shape, affine), place_on_grid(ref, ref_affine, shape, affine)
    if placed[0] is None or placed[1] is None:
        return None
    return placed[0], placed[1]


def _resample_nearest(
    array: np.ndarray, affine: np.ndarray, ref_shape: tuple[int, ...], ref_affine: np.ndarray
) -> np.ndarray:
    """``array`` (on ``affine``) resampled onto the reference grid, nearest neighbour, 0 outside."""
    from scipy import ndimage

    ref_to_src = np.linalg.solve(affine, ref_affine)  # reference voxel -> source voxel (homogeneous)
    return ndimage.affine_transform(
        array, ref_to_src, output_shape=ref_shape, order=0, mode="constant", cval=0, prefilter=False
    )


def score_case(
    pair: CasePair,
    labels: Sequence[int] | None,
    tolerance: float = 2.0,
    resample_to_reference: bool = False,
    threads: int = 1,
) -> dict:
    """Load and score one case. Returns ``{"case", "pred", "ref", "labels": {key: Scores}, "found", "shape",
    "spacing"}``.

    ``labels``: values to score (None: every value > 0 in either map, listed in ``found``). A value in
    a map that is not in ``labels`` is an error (the dataset.json and the maps disagree). ``shape`` and
    ``spacing`` (mm per axis) are the grid the case was scored on.
    """
    from hiend_data import load_volume

    if pair.pred is not None and threads > 1:  # decompression releases the GIL: read both at once
        with ThreadPoolExecutor(max_workers=2) as pool:
            loading = pool.submit(load_volume, pair.ref), pool.submit(load_volume, pair.pred)
            ref_vol, pred_vol = loading[0].result(), loading[1].result()
    else:
        ref_vol = load_volume(pair.ref)
        pred_vol = load_volume(pair.pred) if pair.pred is not None else None
    ref = _as_label_map(np.asarray(ref_vol.array), pair.ref)
    spacing = tuple(float(s) for s in ref_vol.spacing)
    if pair.pred is None or pred_vol is None:
        pred = np.zeros_like(ref)
    else:
        pred = _as_label_map(np.asarray(pred_vol.array), pair.pred)
        same_shape = pred.shape == ref.shape
        same_affine = same_shape and np.allclose(pred_vol.affine, ref_vol.affine, atol=GEOMETRY_ATOL, rtol=0)
        common = None
        if not same_affine and (is_seg_name(pair.pred) or is_seg_name(pair.ref)):
            common = _common_block(pred, pred_vol.affine, ref, ref_vol.affine)
        if common is not None:
            pred, ref = common
        elif not same_affine:
            if not resample_to_reference:
                what = (
                    f"shape {pred.shape} vs {ref.shape}"
                    if not same_shape
                    else f"affine differs by up to {float(np.abs(pred_vol.affine - ref_vol.affine).max()):.4g} mm"
                )
                raise InputError(
                    f"case {pair.case}: prediction {pair.pred.name} and reference {pair.ref.name} "
                    f"are on different grids ({what}); use --resample-to-reference to resample "
                    "the prediction (nearest neighbour)"
                )
            pred = _resample_nearest(
                pred,
                np.asarray(pred_vol.affine, dtype=np.float64),
                ref.shape,
                np.asarray(ref_vol.affine, dtype=np.float64),
            )
    pred, ref, spacing = c_order(pred, ref, spacing)  # NIfTI arrays are Fortran-ordered
    boxes = (label_boxes(pred), label_boxes(ref))
    found = sorted(set(present_values(boxes[0])) | set(present_values(boxes[1])))
    if labels is not None:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            where = (
                pair.pred.name
                if pair.pred is not None and set(unknown) & set(present_values(boxes[0]))
                else pair.ref.name
            )
            raise InputError(
                f"case {pair.case}: label value(s) {unknown} in {where} are not in the dataset.json "
                f"(or checkpoint) labels {list(labels)}"
            )
    scores = score_label_maps(
        pred,
        ref,
        spacing,
        labels if labels is not None else found,
        tolerance,
        foreground=True,
        threads=threads,
        boxes=boxes,
    )
    return {
        "case": pair.case,
        "pred": str(pair.pred) if pair.pred else None,
        "ref": str(pair.ref),
        "labels": scores,
        "found": found,
        "shape": tuple(pred.shape),
        "spacing": spacing,
    }
