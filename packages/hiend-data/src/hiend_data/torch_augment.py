"""The crop augmentation on the GPU (``augment_on = "gpu"``): the paper's recipe applied to a batch of
crops already on the device, so DataLoader workers only crop.

Same distribution as the CPU recipe (:mod:`hiend_data.augment`), by construction: each crop draws the
same ``N_UNIFORMS`` uniform numbers and maps them with the same rule (:func:`params_from_uniforms`:
a flip of each of ``flip_axes`` with ``flip_prob``, rot90 by ``k`` uniform in 1..max_k with
``rot90_prob`` in the plane ``rot90_axes``, ``x * (1 + U(-r, r))`` with ``scale_prob``, then
``x + U(-r, r)`` with ``shift_prob``), applied in the same order (flips, rot90, scale, shift). Given the
same uniform numbers, :func:`augment_batch` returns exactly what :func:`hiend_data.augment.augment`
returns crop by crop (tested); only the random stream differs (a torch generator on the device
instead of the sampler's NumPy streams).

Crops are grouped by their spatial transform (at most 2^3 flips x 4 quarter turns = 32 groups), so a
batch costs a few indexed copies on the device rather than one kernel per crop. Part of the optional
``[torch]`` adapter, like :mod:`hiend_data.torch`.
"""

from __future__ import annotations

import torch

from .augment import N_UNIFORMS, AugmentSettings

__all__ = ["draw_uniforms", "augment_batch", "NO_AUGMENT"]

#: SamplerConfig fields that switch the CPU sampler's augmentation off (the workers then only crop)
NO_AUGMENT = {"flip_prob": 0.0, "rot90_prob": 0.0, "scale_prob": 0.0, "shift_prob": 0.0}


def draw_uniforms(n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None):
    """``[n, N_UNIFORMS]`` float64 uniforms in [0, 1) for ``n`` crops (on ``device``, from ``generator``)."""
    return torch.rand(n, N_UNIFORMS, generator=generator, device=device, dtype=torch.float64)


def _spatial(
    x: torch.Tensor, flips: tuple[int, ...], k: int, axes: tuple[int, int], off: int
) -> torch.Tensor:
    if flips:
        x = torch.flip(x, dims=[a + off for a in flips])
    if k:
        x = torch.rot90(x, k, dims=[axes[0] + off, axes[1] + off])
    return x


@torch.no_grad()
def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    settings: AugmentSettings,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The recipe of ``settings`` (a :class:`~hiend_data.sampling.SamplerConfig`) on a batch of crops.

    images: float ``[N, C, X, Y, Z]`` on any device; labels: ``[N, X, Y, Z]`` or None (spatial
        transforms only). Returned as new tensors (the inputs are not modified).
    generator: a torch generator on the images' device (None: torch's default one for that device).
    uniforms: ``[N, N_UNIFORMS]`` in [0, 1) to use instead of drawing (float64 for bit-equality with
        the NumPy recipe); by default :func:`draw_uniforms`.
    """
    n = images.shape[0]
    if labels is not None and labels.shape[0] != n:
        raise ValueError(f"labels hold {labels.shape[0]} crops, images {n}")
    u = draw_uniforms(n, generator, images.device) if uniforms is None else uniforms.to(images.device)
    if u.shape != (n, N_UNIFORMS):
        raise ValueError(f"uniforms must be [{n}, {N_UNIFORMS}], got {list(u.shape)}")
    axes = tuple(settings.flip_axes)
    flip = u[:, : len(axes)] < settings.flip_prob  # [N, len(flip_axes)]
    max_k = settings.rot90_max_k
    k = torch.where(
        u[:, 3] < settings.rot90_prob,
        1 + torch.clamp((u[:, 4] * max_k).floor().long(), max=max_k - 1),
        torch.zeros_like(u[:, 3], dtype=torch.long),
    )
    # group the crops by (flips, k) on the host: one small transfer of N x 4 integers
    code = (flip.long() * torch.tensor([1, 2, 4][: len(axes)], device=u.device)).sum(1) * 4 + k
    codes = code.cpu().tolist()
    out_img = images.clone()
    out_lbl = None if labels is None else labels.clone()
    rot_axes = tuple(settings.rot90_axes)
    for c in sorted(set(codes)):
        if c == 0:
            continue
        idx = torch.tensor([i for i, v in enumerate(codes) if v == c], device=images.device)
        bits, kk = divmod(c, 4)
        flips = tuple(a for j, a in enumerate(axes) if bits >> j & 1)
        out_img[idx] = _spatial(images[idx], flips, kk, rot_axes, off=2)
        if out_lbl is not None:
            out_lbl[idx] = _spatial(labels[idx], flips, kk, rot_axes, off=1)
    # intensity, as the NumPy recipe: factor and offset computed in float64, applied in float32
    shape = (n,) + (1,) * (images.dim() - 1)
    if settings.scale_prob > 0:
        fired = u[:, 5] < settings.scale_prob
        scale = torch.where(
            fired, 1.0 + settings.scale_range * (2.0 * u[:, 6] - 1.0), torch.ones_like(u[:, 6])
        )
        if bool(fired.any()):
            out_img.mul_(scale.to(out_img.dtype).view(shape))
    if settings.shift_prob > 0:
        fired = u[:, 7] < settings.shift_prob
        shift = torch.where(fired, settings.shift_range * (2.0 * u[:, 8] - 1.0), torch.zeros_like(u[:, 8]))
        if bool(fired.any()):
            out_img.add_(shift.to(out_img.dtype).view(shape))
    return out_img, out_lbl
