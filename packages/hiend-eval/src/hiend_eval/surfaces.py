"""Surfaces of boolean masks and the directed surface distances between two of them, in mm.

Every function takes boolean masks of one shape (any number of dimensions; ``[X, Y, Z]`` for CT) and,
where distances are involved, ``spacing``: the voxel size in mm per *array axis* (the order of
``Volume.spacing``, not the NIfTI header's display order). The geometry the distance metrics of
:mod:`hiend_eval.metrics` read, and nothing else:

* surface = the mask minus its 6-connected (face-neighbour) erosion, the outside of the array counting
  as background, so voxels on the array border are surface (MONAI: ``binary_erosion(m) ^ m`` after a
  zero-padded crop);
* surface distance = Euclidean distance in mm from a surface voxel's centre to the nearest surface
  voxel centre of the other mask.

Distances are computed in the union bounding box of both masks: surface voxels shared by both masks
are at distance 0; the others get an exact local search over nearby grid offsets, and the few with no
target within 3 voxels a k-d tree query (:mod:`hiend_eval.nearest`). On a 488 x 404 x 120 pair a k-d
tree alone was several times faster than a distance transform of the box, the local search faster still.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .nearest import nearest_distances


def check_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, ref)`` as arrays; ValueError unless both are boolean and of one shape."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref masks differ in shape: {pred.shape} vs {ref.shape}")
    if pred.dtype != bool or ref.dtype != bool:
        raise ValueError(f"masks must be boolean arrays, got {pred.dtype} and {ref.dtype}")
    return pred, ref


def spacing_mm(spacing: Sequence[float] | float, ndim: int) -> np.ndarray:
    """``spacing`` as ``ndim`` float64 mm per axis (a number applies to every axis); ValueError unless
    every entry is finite and > 0."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be finite and > 0 mm per axis, got {tuple(sp)}")
    return sp


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | float) -> float:
    """Physical diagonal of the image in mm: ``norm(shape * spacing)``; the distance given to a miss."""
    sp = spacing_mm(spacing, len(shape))
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * sp))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask`` minus its 6-connected erosion (outside the array counts as background).

    Same as ``mask & ~scipy.ndimage.binary_erosion(mask, border_value=0)`` (MONAI's edge). Written as
    ANDs of the flat array with itself shifted by each axis' stride (contiguous, vectorised: ~7x faster
    than shifting n-D views); the wrap-around of a flat shift only ever lands on the first or last
    slice of an axis, which are border voxels and cleared afterwards. Returns a bool array of
    ``mask``'s shape.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    flat = mask.reshape(-1)
    eroded = flat.copy()
    stride = 1
    for axis in range(mask.ndim - 1, -1, -1):
        if mask.shape[axis] > 1:
            np.logical_and(eroded[stride:], flat[:-stride], out=eroded[stride:])
            np.logical_and(eroded[:-stride], flat[stride:], out=eroded[:-stride])
        stride *= mask.shape[axis]
    eroded = eroded.reshape(mask.shape)
    for axis in range(mask.ndim):  # border voxels are never interior
        index = [slice(None)] * mask.ndim
        for end in (0, -1):
            index[axis] = end
            eroded[tuple(index)] = False
    np.logical_xor(eroded, mask, out=eroded)  # eroded is a subset of mask: xor = mask minus erosion
    return eroded


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel, grown by ``margin`` and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface_distances_of_surfaces(
    surf_pred: np.ndarray, surf_ref: np.ndarray, spacing: Sequence[float] | float, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (mm) between two non-empty surfaces given as boolean arrays of one shape.

    Returns ``(d_pred_to_ref [n_pred_surface], d_ref_to_pred [n_ref_surface])`` float64, in the C order
    of the surface voxels. Voxels on both surfaces get 0 without a query.
    """
    sp = spacing_mm(spacing, surf_pred.ndim)
    flat_pred = np.flatnonzero(surf_pred)
    flat_ref = np.flatnonzero(surf_ref)
    shared_pred = surf_ref.reshape(-1)[flat_pred]  # per pred-surface voxel (C order): on the ref surface too?
    shared_ref = surf_pred.reshape(-1)[flat_ref]
    d_pred = np.zeros(len(flat_pred))
    d_ref = np.zeros(len(flat_ref))
    d_pred[~shared_pred] = nearest_distances(flat_pred[~shared_pred], surf_ref, sp, workers)
    d_ref[~shared_ref] = nearest_distances(flat_ref[~shared_ref], surf_pred, sp, workers)
    return d_pred, d_ref


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty masks (see the module docstring).

    Returns ``(d_pred_to_ref, d_ref_to_pred)``: one float64 distance per surface voxel of ``pred``
    resp. ``ref``. Raises ValueError when either mask is empty (the distances are undefined).
    """
    pred, ref = check_masks(pred, ref)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks (see empty_flag)")
    box = bounding_box(pred | ref, margin=1)
    return surface_distances_of_surfaces(surface(pred[box]), surface(ref[box]), spacing, workers)
