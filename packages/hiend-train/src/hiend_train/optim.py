"""The optimisation recipe: AdamW parameter groups and the per-iteration warm-up + cosine schedule.

Weight decay applies to weight matrices and kernels only: never to biases, normalisation weights
(every parameter with fewer than two dimensions), position embeddings, the class token or the mask
token (MAE's rule, which the paper follows).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

#: parameter names (last component) that never decay, whatever their shape
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def decays(name: str, ndim: int) -> bool:
    """Whether the parameter ``name`` (a ``named_parameters`` key) with ``ndim`` dimensions decays."""
    last = name.rsplit(".", 1)[-1]
    return ndim >= 2 and not name.endswith(".bias") and last not in NO_DECAY_NAMES


def param_groups(named: Iterable[tuple[str, Any]], weight_decay: float) -> list[dict[str, Any]]:
    """``model.named_parameters()`` -> two AdamW groups: ``{"params", "weight_decay", "names"}``.

    Frozen parameters (``requires_grad=False``) are left out. Group 0 decays, group 1 does not.
    """
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if decays(name, p.ndim):
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [{"params": decay, "weight_decay": weight_decay, "names": decay_names},
            {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names}]


def build_optimizer(model: Any, lr: float, weight_decay: float, betas: tuple[float, float]) -> Any:
    """AdamW over :func:`param_groups` of ``model`` (the unwrapped module, so names have no ``module.``)."""
    import torch

    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model.named_parameters(), weight_decay)]
    kwargs: dict[str, Any] = {}
    if any(p.is_cuda for g in groups for p in g["params"]):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **kwargs)


def lr_at(step: float, base_lr: float, warmup_steps: float, total_steps: float, min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based; fractions allowed).

    Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then a half cosine from ``base_lr`` to
    ``min_lr`` at ``total_steps`` (and ``min_lr`` after it)::

        step < W:  base_lr * step / W
        else:      min_lr + (base_lr - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if total_steps <= warmup_steps or step >= total_steps:
        return min_lr if step >= total_steps else base_lr
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: Any, lr: float) -> None:
    """Set every group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
