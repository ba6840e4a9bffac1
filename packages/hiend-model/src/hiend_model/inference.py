"""Sliding-window inference over a whole volume with Gaussian blending.

A segmentation network trained on fixed crops (96^3 by default) is run on overlapping windows that
tile the volume; each window's logits are weighted by a Gaussian importance map (largest in the
window centre) and accumulated into one float32 output buffer plus one weight map, then divided.
Only ``sw_batch_size`` windows are held at once, never all of them.

The window placement, the importance map and the padding of volumes smaller than the window are those
of MONAI's ``sliding_window_inference`` (window starts ``i * int(roi * (1 - overlap))``, the last one
moved back inside the volume; ``exp(-x^2 / (2 sigma^2))`` per axis with ``sigma = sigma_scale * roi``,
their product clamped below at ``max(min, 1e-3)``; zero padding split ``diff // 2`` before), so both give
the same numbers (``tests/test_inference.py`` checks it, ``tools/bench/sliding_window_vs_monai.py``
times both).

The run's settings (overlap, flips, windows per call, device, autocast, progress) may come as one
:class:`hiend_model.window.WindowSettings` (``settings=``), as :mod:`hiend_model.predict` passes them.
Ensembles are :mod:`hiend_model.ensemble`; whole scans (files in, label maps on the inputs' grids out)
are :mod:`hiend_model.predict`, built on both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hiend_data.errors import InputError

from .window import FLIPS_ALL, Progress, WindowSettings, flip_set

__all__ = [
    "FLIPS_ALL",
    "WindowSettings",
    "gaussian_importance_map",
    "window_starts",
    "sliding_window_logits",
    "argmax_labels",
    "label_dtype",
]


def gaussian_importance_map(
    roi: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-voxel blending weights of one window, shape ``roi`` (no batch or channel axes).

    ``w(x) = prod_axes exp(-x_a^2 / (2 (sigma_scale_a * roi_a)^2))`` with ``x_a`` the offset from the
    window centre in voxels (``-(roi-1)/2 .. (roi-1)/2``); the peak is 1 (or just under for even sizes),
    and values are clamped below at ``max(min(w), 1e-3)`` so that window corners still count.
    """
    roi = tuple(int(r) for r in roi)
    scales = (sigma_scale,) * len(roi) if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    if len(scales) != len(roi) or any(s <= 0 for s in scales):
        raise InputError(f"sigma_scale {sigma_scale!r} must be positive, one value or one per axis of {roi}")
    weights = None
    for axis, (size, scale) in enumerate(zip(roi, scales, strict=False)):
        sigma = size * scale
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x**2 / (-2 * sigma**2))
        shape = [1] * len(roi)
        shape[axis] = size
        g = g.reshape(shape)
        weights = g if weights is None else weights * g
    floor = max(weights.min().item(), 1e-3)
    return weights.clamp_(min=floor).to(dtype)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of length ``size >= roi``.

    Step ``int(roi * (1 - overlap))`` (at least 1; one window when ``size == roi``); the last window
    is moved back so that it ends at ``size``.
    """
    if size < roi:
        raise ValueError(f"axis of size {size} is smaller than the window {roi}: pad first")
    step = roi if size == roi else max(int(roi * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / step)) if d * step + roi >= size) + 1
    return [i * step - max(i * step + roi - size, 0) for i in range(count)]


def _check_args(
    image: torch.Tensor, roi: Sequence[int], overlap: float, sw_batch_size: int, blend: str
) -> tuple[int, int, int]:
    if image.ndim not in (4, 5):
        raise InputError(f"image of shape {tuple(image.shape)} must be [C, X, Y, Z] or [B, C, X, Y, Z]")
    roi = tuple(int(r) for r in roi) if not isinstance(roi, int) else (int(roi),) * 3
    if len(roi) != 3 or any(r < 1 for r in roi):
        raise InputError(f"window {roi} must be three positive sizes")
    if not 0 <= overlap < 1:
        raise InputError(f"overlap {overlap} must be in [0, 1)")
    if sw_batch_size < 1:
        raise InputError(f"sw_batch_size {sw_batch_size} must be at least 1")
    if blend not in ("gaussian", "constant"):
        raise InputError(f"blend {blend!r} must be 'gaussian' or 'constant'")
    if not image.is_floating_point():
        raise InputError(f"image dtype {image.dtype} must be floating point")
    return roi


def _model_device(model: Callable) -> torch.device:
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


def sliding_window_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi: Sequence[int] | int = (96, 96, 96),
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    blend: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    tta: bool | Sequence[Sequence[int]] = False,
    device: torch.device | str | None = None,
    out_device: torch.device | str | None = None,
    progress: Progress | None = None,
    amp: bool = False,
    *,
    settings: WindowSettings | None = None,
) -> torch.Tensor:
    """Blend a network's window logits over a whole volume.

    Args:
        model: maps windows ``[N, C, *roi]`` to logits ``[N, K, *roi]``; used as is (call ``.eval()``).
        image: ``[C, X, Y, Z]`` or ``[B, C, X, Y, Z]`` floating point (the preprocessed volume).
        roi: window size in voxels (the training crop size).
        overlap: fraction of the window shared by neighbours along each axis, in ``[0, 1)``.
        sw_batch_size: windows per model call.
        blend: ``"gaussian"`` (importance map, see :func:`gaussian_importance_map`) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        tta: flip test-time augmentation: ``True`` averages the logits of all 8 flip combinations of
            the spatial axes (identity included; 8x the compute), or give the flips explicitly as
            spatial-axis tuples, e.g. ``[(), (0,), (1,), (2,)]``. Each window is flipped, predicted and
            flipped back before blending.
        device: where the model runs (default: the device of its parameters).
        out_device: where the output and weight map live (default: the image's device).
        progress: called as ``progress(windows_done, windows_total)`` after each model call.
        amp: run the model under bfloat16 autocast on CUDA (logits are accumulated in float32).
        settings: ``overlap``, ``sw_batch_size``, ``tta``, ``device``, ``amp`` and ``progress`` as one
            :class:`~hiend_model.window.WindowSettings` (what :mod:`hiend_model.predict` passes); with it,
            those six arguments stay at their defaults (a TypeError otherwise: one source for each).

    Returns:
        float32 logits ``[K, X, Y, Z]`` (or ``[B, K, X, Y, Z]`` for a batched image) on ``out_device``:
        the weighted mean of the windows' logits at every voxel.
    """
    if settings is not None:
        given = [
            name
            for name, value, default in (
                ("overlap", overlap, 0.5),
                ("sw_batch_size", sw_batch_size, 1),
                ("tta", tta, False),
                ("amp", amp, False),
            )
            if value != default
        ] + [name for name, value in (("device", device), ("progress", progress)) if value is not None]
        if given:
            raise TypeError(f"sliding_window_logits: {', '.join(given)} given both directly and in settings")
        overlap, sw_batch_size, tta = settings.overlap, settings.sw_batch_size, settings.tta
        device, amp, progress = settings.device, settings.amp, settings.progress
    roi = _check_args(image, roi, overlap, sw_batch_size, blend)
    flips = flip_set(tta)
    batched = image.ndim == 5
    if not batched:
        image = image[None]
    device = torch.device(device) if device is not None else _model_device(model)
    out_device = torch.device(out_device) if out_device is not None else image.device
    batch, channels, *size = image.shape

    # Volumes smaller than the window along an axis are zero-padded to the window (split as MONAI).
    pad = [max(r - s, 0) for r, s in zip(roi, size, strict=False)]
    if any(pad):
        pad_arg = []
        for p in reversed(pad):
            pad_arg += [p // 2, p - p // 2]
        image = F.pad(image, pad_arg)
    padded = list(image.shape[2:])

    starts = [window_starts(s, r, overlap) for s, r in zip(padded, roi, strict=False)]
    windows = [(b, corner) for b in range(batch) for corner in itertools.product(*starts)]
    per_image = len(windows) // batch
    total = len(windows) * len(flips)

    if blend == "gaussian":
        weight = gaussian_importance_map(roi, sigma_scale, device=device)
    else:
        weight = torch.ones(roi, device=device)
    weight_out = weight.to(out_device)
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=out_device)
    for _, corner in windows[:per_image]:
        weight_sum[tuple(slice(c, c + r) for c, r in zip(corner, roi, strict=False))] += weight_out

    output = None
    buffer = torch.empty((min(sw_batch_size, len(windows)), channels, *roi), dtype=image.dtype, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else None
    done = 0
    with torch.no_grad():
        for first in range(0, len(windows), sw_batch_size):
            chunk = windows[first : first + sw_batch_size]
            x = buffer[: len(chunk)]
            for i, (b, corner) in enumerate(chunk):
                x[i].copy_(
                    image[(b, slice(None), *(slice(c, c + r) for c, r in zip(corner, roi, strict=False)))]
                )
            logits = None
            for axes in flips:
                dims = [a + 2 for a in axes]
                xin = torch.flip(x, dims) if dims else x
                if autocast is not None:
                    with autocast:
                        y = model(xin)
                else:
                    y = model(xin)
                if tuple(y.shape[:1]) + tuple(y.shape[2:]) != (len(chunk), *roi):
                    raise ValueError(
                        f"model returned {tuple(y.shape)} for windows {tuple(xin.shape)}: "
                        "expected [N, K, *roi] logits"
                    )
                y = y.float()
                if dims:
                    y = torch.flip(y, dims)
                logits = y if logits is None else logits.add_(y)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if len(flips) > 1:
                logits.div_(len(flips))
            logits = logits.to(out_device)
            if output is None:
                output = torch.zeros(
                    (batch, logits.shape[1], *padded), dtype=torch.float32, device=out_device
                )
            for i, (b, corner) in enumerate(chunk):
                region = output[
                    (b, slice(None), *(slice(c, c + r) for c, r in zip(corner, roi, strict=False)))
                ]
                region.addcmul_(logits[i], weight_out)
            del logits, y

    output.div_(weight_sum)
    if any(pad):
        output = output[
            (slice(None), slice(None), *(slice(p // 2, p // 2 + s) for p, s in zip(pad, size, strict=False)))
        ]
    return output if batched else output[0]


def argmax_labels(
    logits: torch.Tensor, dtype: np.dtype | type = np.uint8, max_chunk_bytes: int = 256 * 2**20
) -> np.ndarray:
    """Class index per voxel of logits ``[K, X, Y, Z]`` -> numpy ``[X, Y, Z]`` of ``dtype``.

    Computed in slabs along X so the int64 temporary of ``torch.argmax`` stays under
    ``max_chunk_bytes`` instead of 8 bytes per voxel of the whole volume.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits of shape {tuple(logits.shape)} must be [K, X, Y, Z]")
    dtype = np.dtype(dtype)
    classes, nx = logits.shape[0], logits.shape[1]
    if classes - 1 > np.iinfo(dtype).max:
        raise ValueError(f"{classes} classes do not fit {dtype}")
    plane = max(int(logits[0, 0].numel()), 1)
    step = max(1, min(nx, max_chunk_bytes // (8 * plane)))
    out = np.empty(tuple(logits.shape[1:]), dtype=dtype)
    for i in range(0, nx, step):
        out[i : i + step] = torch.argmax(logits[:, i : i + step], dim=0).cpu().numpy().astype(dtype)
    return out


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest unsigned dtype for class indices ``0 .. num_classes - 1`` (uint8 up to 256 classes)."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)
