"""Where a crop comes from and how it is written: :class:`PlannedCrop`, :func:`crop_box` and the copy
kernels that fill an output buffer with ``augment(volume[source])`` in one pass.

A compact cache (:mod:`hiend_data.storage`) stores integer codes whose values are ``code * decode``;
the kernels fold ``decode`` into the intensity augmentation, so every crop is still read once and
written once: ``out = stored * a + b`` with ``a = decode * scale`` and ``b = shift``
(:func:`affine_terms`), computed block by block (:data:`BLOCK` elements, a cast copy then the multiply
and add in place while the block is in the CPU cache: :func:`fused_copy`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..augment import AugmentParams, inverse_view

#: Source planes per chunk in :func:`copy_view` (16 x 96 x 96 float32: 590 KB, stays in L2).
CHUNK = 16
#: Output elements per block of :func:`fused_copy` (256 KB of float32, stays in L2).
BLOCK = 1 << 16


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


def affine_terms(
    aug: AugmentParams, intensity: bool, decode: float | None
) -> tuple[np.float32 | None, np.float32 | None]:
    """``(a, b)`` such that the crop is ``stored * a + b`` (None: no multiply / no add).

    ``a`` = ``decode`` (the cache's code -> value multiplier, None for stored values) times the drawn
    intensity scale, ``b`` = the drawn shift (both only when ``intensity``). A float32 cache keeps
    exactly the float32 scale and shift of the augmentation recipe.
    """
    scale = aug.scale if intensity else None
    shift = aug.shift if intensity else None
    if decode is None:
        a = None if scale is None else np.float32(scale)
    else:
        a = np.float32(decode if scale is None else decode * scale)
    return a, None if shift is None else np.float32(shift)


def copy_view(
    volume: np.ndarray,
    out: np.ndarray,
    src: tuple[slice, ...],
    rev: frozenset[int],
    swap: bool,
    aug: AugmentParams,
    channel_first: bool,
    intensity: bool,
    decode: float | None = None,
) -> None:
    """``out = augment(volume[src] * decode)`` in one pass: flips and rot90 folded into the source
    slicing (reversed slices + one transpose, see :func:`~hiend_data.augment.view_plan`), the decode
    multiplier (compact caches) and scale/shift (when ``intensity`` and they fire) fused into the
    copy (:func:`affine_terms`). ``out`` is written in order (a reversed innermost axis on the writing
    side is several times slower than on the reading side).

    With a reversed innermost axis NumPy copies element by element in ``out``'s order; when rot90 has
    moved the source's outermost axis away from ``out``'s first spatial axis, that order reads one row
    per source plane, so the copy then runs in chunks of ``CHUNK`` source planes instead (the same
    operations per element, hence the same bits; ``tools/bench/crop_copy.py``).
    """
    sl = tuple(
        slice(s.stop - 1, s.start - 1 if s.start else None, -1) if i in rev else s for i, s in enumerate(src)
    )
    view = volume[(slice(None), *sl)] if channel_first else volume[sl]
    scale, shift = affine_terms(aug, intensity, decode)
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
    """``out[...] = view * scale + shift`` (each term only when not None; float32 arithmetic whatever
    ``view``'s dtype) in one pass over ``view`` and ``out``.

    A float32 ``view`` with one term: one ufunc. Otherwise block by block (about :data:`BLOCK`
    elements along ``out``'s first axis longer than 1): the block is cast-copied (``view`` of another
    dtype) or multiplied into ``out``, then scaled and/or shifted in place while it is in the CPU
    cache. Casting in the copy and scaling in place is faster than one casting ufunc, which NumPy
    buffers (``tools/bench/decode_copy.py``); the numbers are the same (a cast to float32 is exact
    for uint8, int16 and float16).
    """
    if scale is None and shift is None:
        np.copyto(out, view, casting="same_kind")
        return
    cast = view.dtype != out.dtype
    if not cast and (scale is None or shift is None):
        if scale is not None:
            np.multiply(view, scale, out=out, casting="same_kind")
        else:
            np.add(view, shift, out=out, casting="same_kind")
        return
    axis = next((k for k, n in enumerate(out.shape) if n > 1), 0)
    inner = out.size // max(out.shape[axis], 1)
    rows = max(1, BLOCK // max(inner, 1))
    lead = (slice(None),) * axis
    for i in range(0, out.shape[axis], rows):
        idx = (*lead, slice(i, i + rows))
        block = out[idx]
        if cast:
            np.copyto(block, view[idx], casting="same_kind")
            if scale is not None:
                block *= scale
        else:
            np.multiply(view[idx], scale, out=block, casting="same_kind")
        if shift is not None:
            block += shift


def copy_padded(
    volume: np.ndarray,
    out: np.ndarray,
    src: tuple[slice, ...],
    dst: tuple[slice, ...],
    pad_value: float,
    aug: AugmentParams,
    channel_first: bool,
    intensity: bool = False,
    decode: float | None = None,
) -> None:
    """Padded crop (volume smaller than the crop along some axis): fill with the padding value (after
    scale and shift, when ``intensity``), then write the region (decoded and scaled/shifted, see
    :func:`affine_terms`) through the inverse augmentation view of ``out`` so that ``out`` ends up
    augmented: the same numbers as padding first and augmenting after, in one pass."""
    lead = (slice(None),) if channel_first else ()
    pad = out.dtype.type(pad_value)
    if intensity and aug.scale is not None:
        pad = pad * np.float32(aug.scale)
    if intensity and aug.shift is not None:
        pad = pad + np.float32(aug.shift)
    out.fill(pad)
    scale, shift = affine_terms(aug, intensity, decode)
    fused_copy(volume[lead + src], inverse_view(out, aug, channel_first)[lead + dst], scale, shift)
