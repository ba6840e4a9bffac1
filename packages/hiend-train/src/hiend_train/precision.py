"""The numerics of a training step: precision and autocast, the seeds of epochs and steps, the gradient
norm, and :func:`optimizer_step`, which does the backward pass and (at an accumulation's end) the
grad-scaler unscale, the clipping or norm, the optimizer step and the scaler update in one call, in
the role of MAE's ``NativeScalerWithGradNormCount``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

from hiend_data.errors import InputError

#: the precisions a run resolves to (``auto`` is resolved by :func:`resolve_precision`)
Resolved = Literal["fp32", "bf16", "fp16"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA (``fp16`` where the GPU lacks bf16), ``fp32`` on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision fp16 needs CUDA (on the CPU use fp32 or bf16)")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: str = "cuda") -> torch.amp.GradScaler | None:
    """The grad scaler fp16 needs (None for fp32 and bf16)."""
    return torch.amp.GradScaler(device) if precision == "fp16" else None


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of (run seed, epoch, rank), set at every epoch start (before anything else of
    the epoch draws; each optimizer step then sets its own, :func:`step_seed`)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed set before optimizer step ``step`` (steps done so far in the run) on ``rank``:
    the masking noise and drop-path of a step depend on nothing else, so a run resumed from any step
    boundary, inside an epoch too, draws exactly what an uninterrupted one would, whatever was drawn
    before (and no rank's generator state needs saving)."""
    return int(np.random.SeedSequence([seed, step, rank, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the parameters' gradients, as ``clip_grad_norm_`` computes it: a 0-d
    tensor on their device (no host synchronisation); 0 when no parameter has a gradient."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total_norm is not None:
        return total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    parameters: Iterable[torch.Tensor],
    *,
    grad_accum: int = 1,
    update: bool = True,
    clip_grad: float | None = None,
) -> torch.Tensor | None:
    """Backward of ``loss / grad_accum`` (scaled by ``scaler`` for fp16); with ``update`` (the last
    micro-batch of an accumulation) also the optimizer step: unscale the gradients (so that the norm
    and the clipping see the true ones), clip them to ``clip_grad`` or just measure their norm, step
    (the scaler skips a step whose gradients overflowed, and updates its scale), zero the gradients.

    Returns the total gradient norm before clipping (a 0-d tensor on the device: no host sync), or
    None when only accumulating. Call it inside DDP's ``no_sync()`` for the micro-batches before the
    last (``update=False``); ``parameters`` are read only with ``update``."""
    scaled = loss / grad_accum
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if not update:
        return None
    if scaler is not None:
        scaler.unscale_(optimizer)  # the norm (and clipping) of the true gradients
    if clip_grad is not None:
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    else:
        norm = grad_norm(parameters)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
