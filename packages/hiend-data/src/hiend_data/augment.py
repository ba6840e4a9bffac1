"""The paper's crop augmentation: random flips, rot90, intensity scale and shift.

The recipe is MONAI's ``RandFlipd`` on each spatial axis, then ``RandRotate90d`` in the plane of the
first two spatial axes (``k`` uniform in 1..max_k), then ``RandScaleIntensityd`` (``x * (1 + u)``) and
``RandShiftIntensityd`` (``x + u``), ``u`` uniform in ``[-range, range]``. Flips and rot90 act on image
and label identically; the intensity transforms act on the image only.

Everything here works on NumPy arrays whose first axis is the channel axis (``[C, X, Y, Z]``) or on
label arrays without it (``[X, Y, Z]``); spatial axes are addressed 0..2 in both. Flips and rot90 are
applied as *views* (:func:`spatial_view`, :func:`inverse_view`) so that a crop is copied exactly once,
and the intensity transforms run in place (:func:`apply_intensity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class AugmentSettings(Protocol):
    """The fields of :class:`hiend_data.sampling.SamplerConfig` that drive augmentation."""

    flip_prob: float
    flip_axes: tuple[int, ...]
    rot90_prob: float
    rot90_axes: tuple[int, int]
    rot90_max_k: int
    scale_prob: float
    scale_range: float
    shift_prob: float
    shift_range: float


@dataclass(frozen=True)
class AugmentParams:
    """One crop's drawn augmentation.

    flips: spatial axes (0..2) flipped, in the order they were applied.
    rot_k: quarter turns (0 = none) in the plane ``rot_axes`` (``np.rot90`` convention: from the first
        axis towards the second).
    scale: the image is multiplied by this factor (None = not drawn).
    shift: then this offset is added (None = not drawn).
    """

    flips: tuple[int, ...] = ()
    rot_k: int = 0
    rot_axes: tuple[int, int] = (0, 1)
    scale: float | None = None
    shift: float | None = None

    @property
    def identity(self) -> bool:
        return not self.flips and self.rot_k == 0 and self.scale is None and self.shift is None


#: Uniform numbers one crop's augmentation consumes (see :func:`params_from_uniforms`).
N_UNIFORMS = 9


def params_from_uniforms(settings: AugmentSettings, u: np.ndarray) -> AugmentParams:
    """One crop's augmentation from ``N_UNIFORMS`` numbers in [0, 1), in MONAI's order.

    u[0..2]: flip of each of ``flip_axes`` (p ``flip_prob`` each); u[3]: rot90 fires (p ``rot90_prob``),
    u[4]: its k, uniform in 1..max_k; u[5], u[6]: scale fires, factor ``1 + U(-r, r)``; u[7], u[8]:
    shift fires, offset ``U(-r, r)``. Magnitudes are only used when their transform fires.
    """
    flips = tuple(ax for ax, v in zip(settings.flip_axes, u[:3], strict=False) if v < settings.flip_prob)
    rot_k = (
        1 + min(int(u[4] * settings.rot90_max_k), settings.rot90_max_k - 1)
        if u[3] < settings.rot90_prob
        else 0
    )
    scale = 1.0 + settings.scale_range * (2.0 * float(u[6]) - 1.0) if u[5] < settings.scale_prob else None
    shift = settings.shift_range * (2.0 * float(u[8]) - 1.0) if u[7] < settings.shift_prob else None
    return AugmentParams(flips, rot_k, tuple(settings.rot90_axes), scale, shift)  # type: ignore[arg-type]


def draw_augment(settings: AugmentSettings, rng: np.random.Generator) -> AugmentParams:
    """Draw one crop's augmentation (flip each axis, rot90, scale, shift) from ``rng``."""
    return params_from_uniforms(settings, rng.random(N_UNIFORMS))


def view_plan(params: AugmentParams) -> tuple[frozenset[int], bool]:
    """The flips + rot90 of ``params`` as (spatial axes to reverse, whether to swap the rot90 axes).

    ``rot90(flip(x, F), k, (a, b))`` equals ``swap(reverse(x, R))`` with R = F xor {b} (k=1), F xor
    {a, b} (k=2), F xor {a} (k=3), and the axis swap for odd k: one slicing and at most one transpose,
    which the sampler folds into the crop's own slicing.
    """
    rev = set(params.flips)
    a, b = params.rot_axes
    extra = {0: set(), 1: {b}, 2: {a, b}, 3: {a}}[params.rot_k % 4]
    return frozenset(rev ^ extra), bool(params.rot_k % 2)


def output_shape(shape: tuple[int, ...], params: AugmentParams) -> tuple[int, ...]:
    """Spatial shape ``(X, Y, Z)`` after ``params`` (rot90 by an odd k swaps the plane's axes)."""
    out = list(shape)
    if params.rot_k % 2:
        a, b = params.rot_axes
        out[a], out[b] = out[b], out[a]
    return tuple(out)


def spatial_view(array: np.ndarray, params: AugmentParams, channel_first: bool) -> np.ndarray:
    """``array`` flipped then rotated as ``params`` says, as a view (no copy).

    array: ``[C, X, Y, Z]`` if ``channel_first`` else ``[X, Y, Z]``.
    """
    off = 1 if channel_first else 0
    view = array
    if params.flips:
        view = np.flip(view, axis=tuple(a + off for a in params.flips))
    if params.rot_k:
        a, b = params.rot_axes
        view = np.rot90(view, params.rot_k, axes=(a + off, b + off))
    return view


def inverse_view(out: np.ndarray, params: AugmentParams, channel_first: bool) -> np.ndarray:
    """A view ``P`` of ``out`` such that writing the un-augmented crop into ``P`` leaves the augmented
    crop in ``out`` (``out = rot90(flip(P))``, hence ``P = flip(rot90(out, -k))``).

    out: ``[C, X', Y', Z']`` if ``channel_first`` else ``[X', Y', Z']`` in augmented (output) layout.
    """
    off = 1 if channel_first else 0
    view = out
    if params.rot_k:
        a, b = params.rot_axes
        view = np.rot90(view, -params.rot_k, axes=(a + off, b + off))
    if params.flips:
        view = np.flip(view, axis=tuple(a + off for a in params.flips))
    return view


def apply_intensity(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Scale then shift ``image`` in place (floating arrays only); returns it."""
    if params.scale is not None:
        image *= np.float32(params.scale)
    if params.shift is not None:
        image += np.float32(params.shift)
    return image


def augment(
    image: np.ndarray, label: np.ndarray | None, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference (copying) implementation: returns new contiguous ``image`` ``[C, X, Y, Z]`` float32
    and ``label`` ``[X, Y, Z]`` with ``params`` applied. The sampler uses the view functions instead."""
    img = np.array(spatial_view(image, params, channel_first=True), dtype=np.float32, order="C")
    apply_intensity(img, params)
    lbl = None if label is None else np.array(spatial_view(label, params, channel_first=False), order="C")
    return img, lbl
