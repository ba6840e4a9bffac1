"""Voxel-grid geometry: reorientation by axis permutations and flips, resampling to a spacing.

Conventions. Arrays hold space in their last three axes (``[X, Y, Z]`` or ``[C, X, Y, Z]``); an
affine maps voxel indices ``(i, j, k, 1)`` to world millimetres in RAS+ (nibabel's convention: +x
points to the patient's Right, +y Anterior, +z Superior; the patient's left is at -x).

Reorientation never interpolates: it permutes and flips array axes (exact, invertible) and updates
the affine so every voxel keeps its world position. An oblique scan (axes not parallel to the world
axes) is turned to the closest orientation; its affine keeps the obliquity, so geometry stays exact.

Resampling treats voxels as cells: ``n_in`` voxels of size ``s_in`` become ``n_out`` voxels spanning the
same extent, output voxel ``j`` sampling input coordinate ``(j + 0.5) * n_in / n_out - 0.5`` (voxel
centres at integer coordinates). Nearest neighbour (labels) uses exact integer arithmetic, so an
integer up-sampling followed by the inverse down-sampling gives back the original voxels.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def orientation_transform(affine: np.ndarray, target: str = "RAS") -> np.ndarray:
    """``(3, 2)`` nibabel orientation transform turning an array with ``affine`` into ``target`` codes.

    Row ``i`` is ``[j, f]``: input axis ``i`` becomes output axis ``j``, reversed when ``f == -1``.
    """
    import nibabel.orientations as nio

    src = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    if np.isnan(src).any():
        raise InputError(
            f"affine {np.asarray(affine).round(4).tolist()} has axes that cannot be matched "
            "to world axes (degenerate or sheared geometry)"
        )
    return nio.ornt_transform(src, nio.axcodes2ornt(tuple(target))).astype(np.int64)


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The transform that undoes ``ornt`` (``apply_ornt(apply_ornt(a, t), invert_ornt(t)) == a``)."""
    ornt = np.asarray(ornt, dtype=np.int64)
    inv = np.zeros_like(ornt)
    for i, (j, f) in enumerate(ornt):
        inv[j] = (i, f)
    return inv


def apply_ornt(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Permute and flip the last three axes of ``array`` as ``ornt`` says (a view, no copy)."""
    ornt = np.asarray(ornt, dtype=np.int64)
    lead = array.ndim - 3
    out = array
    for i, (_, f) in enumerate(ornt):
        if f == -1:
            out = np.flip(out, axis=lead + i)
    perm = np.argsort(ornt[:, 0])  # output axis k comes from input axis perm[k]
    return out.transpose(*range(lead), *(lead + int(p) for p in perm))


def ornt_affine(affine: np.ndarray, ornt: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Affine of ``apply_ornt(array, ornt)`` when ``array`` (spatial ``shape``) had ``affine``."""
    import nibabel.orientations as nio

    return np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(ornt, tuple(shape[-3:]))


def ornt_shape(shape: tuple[int, ...], ornt: np.ndarray) -> tuple[int, int, int]:
    """Spatial shape after :func:`apply_ornt`."""
    out = [0, 0, 0]
    for i, (j, _) in enumerate(np.asarray(ornt, dtype=np.int64)):
        out[int(j)] = int(shape[-3:][i])
    return tuple(out)  # type: ignore[return-value]


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between an array axis and its closest world axis (0 for axis-aligned)."""
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    cos = np.abs(rzs / np.linalg.norm(rzs, axis=0)).max(axis=0)
    return float(np.degrees(np.arccos(np.clip(cos.min(), -1.0, 1.0))))


def target_shape(
    shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[int, int, int]:
    """Voxel counts that cover the same extent at the ``target`` spacing (rounded, at least 1)."""
    return tuple(
        max(1, int(round(n * s / t)))
        for n, s, t in zip(  # type: ignore[return-value]
            shape[-3:], spacing, target, strict=True
        )
    )


def resample_affine(affine: np.ndarray, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> np.ndarray:
    """Affine of the grid of ``shape_out`` voxels spanning the same extent as ``shape_in`` (cell model)."""
    scale = np.array([i / o for i, o in zip(shape_in[-3:], shape_out[-3:], strict=True)])
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ m


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input index sampled by each of ``n_out`` output voxels (nearest, exact integer arithmetic)."""
    j = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * j + 1) * n_in) // (2 * n_out), n_in - 1)


def resample_nearest(array: np.ndarray, shape_out: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes to ``shape_out`` (labels; dtype kept)."""
    shape_in = array.shape[-3:]
    if tuple(shape_in) == tuple(shape_out[-3:]):
        return np.ascontiguousarray(array)
    ix, iy, iz = (nearest_indices(i, o) for i, o in zip(shape_in, shape_out[-3:], strict=True))
    out = array[..., ix, :, :][..., iy, :][..., iz]
    return np.ascontiguousarray(out)


def linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, w)`` so that output voxel ``j`` = ``(1 - w[j]) * in[i0[j]] + w[j] * in[i1[j]]`` (cell model,
    edges clamped)."""
    j = np.arange(n_out, dtype=np.float64)
    x = np.clip((j + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.minimum(np.floor(x).astype(np.int64), max(n_in - 2, 0))
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def _linear_axis(array: np.ndarray, axis: int, n_out: int, block: int = 16) -> np.ndarray:
    """Linear resampling of one axis to ``n_out`` voxels, float32, in blocks to bound temporaries."""
    i0, i1, w = linear_weights(array.shape[axis], n_out)
    shape = [1] * array.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    out = np.empty(array.shape[:axis] + (n_out,) + array.shape[axis + 1 :], dtype=np.float32)
    other = 0 if axis != 0 else 1  # the axis we cut into blocks
    for a in range(0, array.shape[other], block):
        sl = [slice(None)] * array.ndim
        sl[other] = slice(a, a + block)
        sub = array[tuple(sl)]
        lo = np.take(sub, i0, axis=axis).astype(np.float32, copy=False)
        hi = np.take(sub, i1, axis=axis).astype(np.float32, copy=False)
        hi -= lo
        hi *= w
        hi += lo
        out[tuple(sl)] = hi
    return out


def resample_linear(array: np.ndarray, shape_out: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of the last three axes to ``shape_out``; returns a new float32 array.

    Samples at the cell-model coordinates of the module docstring; values beyond the border repeat the
    edge voxel (the same numbers as ``scipy.ndimage.zoom(order=1, mode="nearest", grid_mode=True)``,
    computed as three separable 1-D passes, many times faster). Channels are resampled one at a time;
    the axis that shrinks most goes first so temporaries stay small.
    """
    shape_out = tuple(int(s) for s in shape_out[-3:])
    lead = array.shape[:-3]
    if tuple(array.shape[-3:]) == shape_out:
        return np.array(array, dtype=np.float32, order="C")  # always a new array: callers write into it
    out = np.empty((*lead, *shape_out), dtype=np.float32)
    flat_in = array.reshape(-1, *array.shape[-3:]) if lead else array[None]
    flat_out = out.reshape(-1, *shape_out) if lead else out[None]
    for c in range(flat_in.shape[0]):
        # Work in the axis order of the memory layout (NIfTI arrays come Fortran-ordered; a gather on
        # the wrong order is many times slower), then write back in the caller's order.
        perm = [int(a) for a in np.argsort([-abs(st) for st in flat_in[c].strides], kind="stable")]
        cur = flat_in[c].transpose(perm)
        target = [shape_out[a] for a in perm]
        for axis in sorted(range(3), key=lambda a: target[a] / cur.shape[a]):
            if cur.shape[axis] != target[axis]:
                cur = _linear_axis(cur, axis, target[axis])
        flat_out[c] = cur.transpose(np.argsort(perm))
    return out


def foreground_box(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(start, stop)`` of the smallest box holding every True voxel of a 3-D mask (whole grid if none)."""
    if not mask.any():
        return (0, 0, 0), tuple(int(s) for s in mask.shape)  # type: ignore[return-value]
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    return tuple(start), tuple(stop)  # type: ignore[return-value]


def crop_affine(affine: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
    """Affine of the sub-grid whose voxel 0 is voxel ``start`` of the grid with ``affine``."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out


def lattice_map(affine: np.ndarray, target_affine: np.ndarray, atol: float = 1e-3) -> np.ndarray | None:
    """``inv(target_affine) @ affine`` rounded to whole numbers when it is a signed permutation of the
    axes plus a whole-voxel shift (within ``atol`` voxels): the voxels of the first grid ARE voxels of
    the second. None otherwise (another spacing, direction or a fractional offset)."""
    m = np.linalg.solve(np.asarray(target_affine, dtype=np.float64), np.asarray(affine, dtype=np.float64))
    rounded = np.round(m)
    if np.abs(m - rounded).max() > atol:
        return None
    perm = np.abs(rounded[:3, :3])
    if not (perm.sum(axis=0) == 1).all() or not (perm.sum(axis=1) == 1).all():
        return None
    return rounded


def union_grid(
    affine: np.ndarray, shape: tuple[int, ...], other_affine: np.ndarray, other_shape: tuple[int, ...]
) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """The smallest grid in the first grid's axis order covering both grids, when they are blocks of one
    lattice (:func:`lattice_map`), as ``(affine, shape)``; None otherwise."""
    m = lattice_map(other_affine, affine)
    if m is None:
        return None
    corners = np.array([[i, j, k, 1] for i in (0, other_shape[0] - 1) for j in (0, other_shape[1] - 1)
                        for k in (0, other_shape[2] - 1)], dtype=np.float64)  # fmt: skip
    mapped = np.round(corners @ m.T)[:, :3].astype(np.int64)
    lo = np.minimum(mapped.min(axis=0), 0)
    hi = np.maximum(mapped.max(axis=0), np.asarray(shape[:3]) - 1)
    out = np.asarray(affine, dtype=np.float64).copy()
    out[:3, 3] = (out @ np.append(lo, 1.0))[:3]
    return out, tuple(int(v) for v in hi - lo + 1)  # type: ignore[return-value]


def place_on_grid(
    array: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    target_affine: np.ndarray,
    atol: float = 1e-3,
) -> np.ndarray | None:
    """``array`` (on ``affine``) copied onto the grid ``(shape, target_affine)`` when its voxels ARE
    voxels of that grid (no interpolation), else None.

    That is the case when ``inv(target_affine) @ affine`` is a signed permutation of the axes plus a
    whole-voxel shift (:func:`lattice_map`): a sub-block of the target grid, stored in any axis
    order and direction, e.g. a DICOM Segmentation spanning only the slices it labels. Target voxels
    outside the block are 0; a nonzero voxel of ``array`` outside the target grid gives None.
    Returns an array of ``shape`` and ``array``'s dtype.
    """
    m = lattice_map(affine, target_affine, atol)
    if m is None:
        return None
    perm, shift = m[:3, :3], m[:3, 3].astype(np.int64)
    # target axis t takes source axis src[t], flipped when sign[t] < 0
    src = [int(np.flatnonzero(perm[t])[0]) for t in range(3)]
    sign = [int(perm[t, src[t]]) for t in range(3)]
    moved = np.transpose(array, src)
    starts = []
    for t in range(3):
        n = moved.shape[t]
        if sign[t] < 0:
            moved = np.flip(moved, axis=t)
            starts.append(int(shift[t]) - (n - 1))  # source index n-1 lands at shift - (n - 1)
        else:
            starts.append(int(shift[t]))
    out = np.zeros(tuple(shape), dtype=array.dtype)
    src_sl, dst_sl = [], []
    for t in range(3):
        lo, hi = max(starts[t], 0), min(starts[t] + moved.shape[t], shape[t])
        if hi <= lo:
            return None if np.any(array) else out
        dst_sl.append(slice(lo, hi))
        src_sl.append(slice(lo - starts[t], hi - starts[t]))
    inside = moved[tuple(src_sl)]
    if np.count_nonzero(inside) != np.count_nonzero(moved):
        return None  # labelled voxels outside the target grid
    out[tuple(dst_sl)] = inside
    return out
