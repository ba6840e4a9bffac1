"""Where a crop comes from and how it is written: :class:`PlannedCrop`, :func:`crop_box` and the copy
kernels that fill an output buffer with ``augment(volume[source])`` in one pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..augment import AugmentParams, inverse_view

#: Source planes per chunk in :func:`copy_view` (16 x 96 x 96 float32: 590 KB, stays in L2).
CHUNK = 16


@dataclass(frozen=True)
class PlannedCrop:
    """One crop as drawn, before anything is copied (:meth:`~hiend_data.sampling.CropSampler.plan`)."""

    #: the voxel drawn, before the fit-in-volume shift
    centre: tuple[int, ...]
    #: its kind: True for foreground (after MONAI's swap where the volume lacks the kind drawn)
    foreground: bool
    #: slices of the volume read (spatial axes)
    source: tuple[slice, ...]
    #: where they land in the crop: all of it unless ``padded``
    dest: tuple[slice, ...]
    #: the volume is smaller than the crop along some axis
    padded: bool
    aug: AugmentParams


def crop_box(
    centre: tuple[int, ...], shape: tuple[int, ...], size: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
    """Source and destination slices of a crop of ``size`` around ``centre`` in a volume of ``shape``.

    Returns (source slices into the volume, destination slices into the crop, whether padding is
    needed). Per axis: the crop is shifted inside the volume when it would cross the border; where
    the volume is smaller than the crop the whole axis is taken and placed at ``(size - dim) // 2``.
    """
    src, dst, padded = [], [], False
    for c, dim, sz in zip(centre, shape, size, strict=False):
        if dim >= sz:
            start = min(max(int(c) - sz // 2, 0), dim - sz)
            src.append(slice(start, start + sz))
            dst.append(slice(0, sz))
        else:
            before = (sz - dim) // 2
            src.append(slice(0, dim))
            dst.append(slice(before, before + dim))
            padded = True
    return tuple(src), tuple(dst), padded


def copy_view(
    volume: np.ndarray,
    out: np.ndarray,
    src: tuple[slice, ...],
    rev: frozenset[int],
    swap: bool,
    aug: AugmentParams,
    channel_first: bool,
    intensity: bool,
) -> None:
    """``out = augment(volume[src])`` in one pass: flips and rot90 folded into the source slicing
    (reversed slices + one transpose, see :func:`~hiend_data.augment.view_plan`), scale/shift fused
    into the copy when ``intensity`` and they fire. ``out`` is written in order (a reversed innermost
    axis on the writing side is several times slower than on the reading side).

    With a reversed innermost axis NumPy copies element by element in ``out``'s order; when rot90 has
    moved the source's outermost axis away from ``out``'s first spatial axis, that order reads one row
    per source plane, so the copy then runs in chunks of ``CHUNK`` source planes instead (the same
    operations per element, hence the same bits; ``tools/bench/crop_copy.py``).
    """
    sl = tuple(
        slice(s.stop - 1, s.start - 1 if s.start else None, -1) if i in rev else s for i, s in enumerate(src)
    )
    view = volume[(slice(None), *sl)] if channel_first else volume[sl]
    scale = np.float32(aug.scale) if intensity and aug.scale is not None else None
    shift = np.float32(aug.shift) if intensity and aug.shift is not None else None
    if swap:
        off = 1 if channel_first else 0
        perm = list(range(view.ndim))
        a, b = aug.rot_axes[0] + off, aug.rot_axes[1] + off
        perm[a], perm[b] = perm[b], perm[a]
        view = view.transpose(perm)
        if view.strides[-1] == -view.itemsize:  # the source's own innermost axis, reversed
            first = 1 if channel_first else 0
            axis = max(range(first, view.ndim - 1), key=lambda k: abs(view.strides[k]))
            if axis != first:
                lead = (slice(None),) * axis
                for i in range(0, view.shape[axis], CHUNK):
                    idx = (*lead, slice(i, i + CHUNK))
                    fused_copy(view[idx], out[idx], scale, shift)
                return
    fused_copy(view, out, scale, shift)


def fused_copy(view: np.ndarray, out: np.ndarray, scale: np.float32 | None, shift: np.float32 | None) -> None:
    """``out[...] = view * scale + shift`` in float32 (each factor only when not None), at most two passes."""
    if scale is not None:
        np.multiply(view, scale, out=out, casting="same_kind")
        if shift is not None:
            out += shift
    elif shift is not None:
        np.add(view, shift, out=out, casting="same_kind")
    else:
        np.copyto(out, view, casting="same_kind")


def copy_padded(
    volume: np.ndarray,
    out: np.ndarray,
    src: tuple[slice, ...],
    dst: tuple[slice, ...],
    pad_value: float,
    aug: AugmentParams,
    channel_first: bool,
) -> None:
    """Padded crop (volume smaller than the crop along some axis): fill, then write the region through
    the inverse augmentation view of ``out`` so that ``out`` ends up augmented."""
    lead = (slice(None),) if channel_first else ()
    out.fill(pad_value)
    np.copyto(inverse_view(out, aug, channel_first)[lead + dst], volume[lead + src], casting="same_kind")
