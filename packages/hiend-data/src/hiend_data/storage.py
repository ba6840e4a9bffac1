"""How a cache stores a case's image: the dtypes of ``Plan.cache_dtype``, encoding and decoding.

A preprocessed image holds float32 values (CT: the window scaled to [0, 1]; MRI: z-scores). The cache
may store them compactly:

* ``uint8`` / ``int16`` (CT only): integer codes ``q = rint(v * L)`` with ``L`` = :data:`LEVELS` (255
  or 32,767 steps over the window), read back as ``q * scale`` with ``scale = 1 / L`` (one multiply,
  which the sampler fuses into its copy of each crop). The error is at most half a step
  (``0.5 / L`` of the window: 0.83 HU in uint8 for the paper's 425 HU window), except that values in
  ``(0, 0.5 / L)`` are stored as ``q = 1`` (error under one step): ``q > 0`` exactly where ``v > 0``, so
  the foreground (``image > 0``), and with it every crop centre the sampler draws, is the same as in
  float32.
* ``float16``: the values rounded to float16 (11 significant bits: relative error <= 2^-11), with the
  same care at 0 (a positive value too small for float16 becomes its smallest positive number);
  values beyond float16's range (65,504) are an error.
* ``float32``: the values themselves (``scale`` None).

Bytes per voxel: 1 (uint8), 2 (int16, float16), 4 (float32).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: Steps over the CT window for the integer dtypes (code ``L`` is the window's high end).
LEVELS = {"uint8": 255, "int16": 32767}
#: The stored dtypes (``Plan.resolved_cache_dtype``) and their NumPy types.
NUMPY_DTYPES = {"uint8": np.uint8, "int16": np.int16, "float16": np.float16, "float32": np.float32}
#: Planes along the first spatial axis encoded at a time (bounds the float32 temporary).
_SLAB = 16


def step(dtype: str) -> float | None:
    """The decode multiplier ``1 / L`` of an integer dtype (one step as a fraction of the window), or
    None for a floating dtype (the stored values are the values)."""
    if dtype not in NUMPY_DTYPES:
        raise InputError(f"cache dtype {dtype!r}: choose one of {', '.join(NUMPY_DTYPES)}")
    levels = LEVELS.get(dtype)
    return None if levels is None else 1.0 / levels


def encode(image: np.ndarray, dtype: str, name: str = "image") -> tuple[np.ndarray, float | None]:
    """Store ``image`` (float32 ``[C, X, Y, Z]`` values) as ``dtype``.

    Returns (the stored array ``[C, X, Y, Z]`` of ``dtype``, C-contiguous; the decode multiplier of
    :func:`step`). Integer dtypes need values in [0, 1] (a CT window); ``InputError`` naming ``name``
    otherwise, or for values beyond float16's range.
    """
    scale = step(dtype)
    if dtype == "float32":
        return np.ascontiguousarray(image, dtype=np.float32), None
    out = np.empty(image.shape, dtype=NUMPY_DTYPES[dtype])
    levels = LEVELS.get(dtype)
    for c in range(image.shape[0]):
        for i in range(0, image.shape[1], _SLAB):
            src, dst = image[c, i : i + _SLAB], out[c, i : i + _SLAB]
            if levels is not None:
                if src.size and (src.min() < 0 or src.max() > 1):
                    raise InputError(
                        f"{name}: values outside [0, 1] cannot be stored as {dtype} (a CT window's "
                        "range); use cache_dtype float16 or float32"
                    )
                codes = np.multiply(src, np.float32(levels), dtype=np.float32)
                np.rint(codes, out=codes)
                np.maximum(codes, src > 0, out=codes)  # (0, half a step) -> 1: foreground stays > 0
                dst[...] = codes
            else:
                if src.size and np.abs(src).max() > np.finfo(np.float16).max:
                    raise InputError(
                        f"{name}: values beyond float16's range (+-65504) cannot be stored as float16; "
                        "use cache_dtype float32"
                    )
                dst[...] = src
                tiny = (dst == 0) & (src > 0)
                dst[tiny] = np.float16(2.0**-24)  # the smallest positive float16: foreground stays > 0
    return out, scale


def decode(stored: np.ndarray, scale: float | None) -> np.ndarray:
    """The float32 values of a stored image (a new array; ``stored`` itself when it is float32 values)."""
    if scale is None:
        return stored if stored.dtype == np.float32 else stored.astype(np.float32)
    return np.multiply(stored, np.float32(scale), dtype=np.float32)
