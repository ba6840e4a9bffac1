"""Intensity normalisation: CT windowing (the paper's) and MRI z-score on the foreground.

Both return float32 arrays of the input's shape and accept ``[X, Y, Z]`` or ``[C, X, Y, Z]``.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def ct_window(
    array: np.ndarray, window: tuple[float, float] = (-175.0, 250.0), *, inplace: bool = False
) -> np.ndarray:
    """Clip HU to ``window = (low, high)`` and scale linearly to [0, 1] (low -> 0, high -> 1), float32.

    With ``inplace=True`` and a float32 input, the input array is overwritten and returned.
    """
    lo, hi = float(window[0]), float(window[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"CT window {window}: need finite low < high")
    out = array if inplace and array.dtype == np.float32 else np.array(array, dtype=np.float32)
    np.clip(out, lo, hi, out=out)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    # (hi - lo) * (1 / (hi - lo)) may round a hair above 1 in float32
    np.minimum(out, np.float32(1.0), out=out)
    return out


def zscore(
    array: np.ndarray, mask: np.ndarray | None = None, *, inplace: bool = False
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Per-channel z-score ``(x - mean) / std`` with mean and std taken over ``mask`` (MRI).

    ``mask`` (spatial ``[X, Y, Z]`` bool) defaults to each channel's non-zero voxels (MRI background is
    zero). Voxels outside the mask are set to 0. Returns the float32 array and ``[(mean, std), ...]``
    per channel; a constant channel gets std 1 (no division by zero).
    """
    out = array if inplace and array.dtype == np.float32 else np.array(array, dtype=np.float32)
    chans = out if out.ndim == 4 else out[None]
    stats = []
    for c in range(chans.shape[0]):
        ch = chans[c]
        m = ch != 0 if mask is None else np.asarray(mask, dtype=bool)
        if m.shape != ch.shape:
            raise InputError(f"z-score mask shape {m.shape} differs from the image's {ch.shape}")
        vals = ch[m] if m.any() else ch.ravel()
        mean = float(vals.mean(dtype=np.float64))
        std = float(vals.std(dtype=np.float64))
        std = std if std > 1e-8 else 1.0
        ch -= np.float32(mean)
        ch *= np.float32(1.0 / std)
        if m.any():
            ch[~m] = 0.0
        stats.append((mean, std))
    return out, stats
