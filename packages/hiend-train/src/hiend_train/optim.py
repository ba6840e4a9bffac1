"""The optimisation recipe: AdamW parameter groups and the per-iteration warm-up + cosine schedule.

Weight decay applies to weight matrices and kernels only: never to biases, normalisation weights
(every parameter with fewer than two dimensions), position embeddings, the class token or the mask
token (MAE's rule, which the paper follows).

Fine-tuning may scale the encoder's learning rates (:func:`layer_lr_scales`: layer-wise decay as in
BEiT / MAE fine-tuning, and a flat encoder multiplier): each optimizer group then carries an
``lr_scale`` and :func:`set_lr` gives it ``lr x lr_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: parameter names (last component) that never decay, whatever their shape
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def decays(name: str, ndim: int) -> bool:
    """Whether the parameter ``name`` (a ``named_parameters`` key) with ``ndim`` dimensions decays."""
    last = name.rsplit(".", 1)[-1]
    return ndim >= 2 and not name.endswith(".bias") and last not in NO_DECAY_NAMES


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    lr_scales: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """``model.named_parameters()`` -> AdamW groups: ``{"params", "weight_decay", "names"}``.

    Frozen parameters (``requires_grad=False``) are left out. Without ``lr_scales``: two groups, group
    0 decays, group 1 does not. With ``lr_scales`` (parameter name -> learning-rate multiplier, 1 for
    a name it lacks): one group per (multiplier, decays or not), in the order of the parameters' first
    appearance, each with its ``"lr_scale"``.
    """
    if lr_scales is None:
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
        return [
            {"params": decay, "weight_decay": weight_decay, "names": decay_names},
            {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
        ]
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        scale, decay_it = float(lr_scales.get(name, 1.0)), decays(name, p.ndim)
        group = groups.setdefault(
            (scale, decay_it),
            {"params": [], "weight_decay": weight_decay if decay_it else 0.0, "names": [], "lr_scale": scale},
        )
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def encoder_depth(name: str, num_blocks: int) -> int:
    """Layer depth of the encoder parameter ``name`` (relative to the encoder: ``blocks.3.attn.qkv.weight``)
    for layer-wise decay: ``blocks.i.*`` -> i + 1, ``norm.*`` (after the last block) -> num_blocks + 1,
    everything else (patch embedding, position embedding, class token: before block 0) -> 0."""
    head, _, rest = name.partition(".")
    if head == "blocks":
        return int(rest.partition(".")[0]) + 1
    if head == "norm":
        return num_blocks + 1
    return 0


def layer_lr_scales(
    model: torch.nn.Module, layer_decay: float | None = None, encoder_lr_scale: float = 1.0
) -> dict[str, float]:
    """Learning-rate multiplier of every parameter of ``model`` (a network whose ViT is ``model.encoder``
    with ``.blocks``, such as the UNETR), by ``model.named_parameters()`` name.

    An encoder parameter at :func:`encoder_depth` d gets ``encoder_lr_scale x layer_decay^(D - d)`` with
    D = number of blocks + 1 (so the final norm gets ``encoder_lr_scale``, block i
    ``layer_decay^(D - 1 - i)``, the patch and position embeddings ``layer_decay^D``); without
    ``layer_decay`` just ``encoder_lr_scale``. Every other parameter (decoder, head) gets 1.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "blocks"):
        raise ValueError(f"{type(model).__name__} has no ViT encoder (model.encoder with blocks)")
    depth_max = len(encoder.blocks) + 1
    local = {id(p): n for n, p in encoder.named_parameters()}
    out: dict[str, float] = {}
    for name, p in model.named_parameters():
        if id(p) not in local:
            out[name] = 1.0
            continue
        decay = (
            1.0
            if layer_decay is None
            else layer_decay ** (depth_max - encoder_depth(local[id(p)], depth_max - 1))
        )
        out[name] = encoder_lr_scale * decay
    return out


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` of ``model`` (the unwrapped module, so names have no ``module.``).

    ``lr_scales`` (e.g. from :func:`layer_lr_scales`): each group starts at ``lr x lr_scale`` and keeps
    its ``lr_scale`` for :func:`set_lr`; without it the two groups of the recipe, all at ``lr``.
    """
    import torch

    groups = [
        {k: v for k, v in g.items() if k != "names"}
        for g in param_groups(model.named_parameters(), weight_decay, lr_scales)
    ]
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = lr * g["lr_scale"]
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate: ``lr x group["lr_scale"]`` (``lr`` for a group without one)."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale")
        group["lr"] = lr if scale is None else lr * scale
