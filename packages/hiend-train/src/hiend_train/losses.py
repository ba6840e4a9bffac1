"""Fine-tuning loss and Dice scores.

:func:`dice_ce_loss` is the paper's loss: MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` with
its defaults (background included, Dice per sample and class with smoothing 1e-5 above and below, mean
over both; plus the mean cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """logits [B, K, *S], labels [B, *S] integer -> scalar: mean over (b, k) of
    1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth), p = softmax over K, y one-hot."""
    k = logits.shape[1]
    prob = logits.float().softmax(1)
    onehot = F.one_hot(labels.long(), k).movedim(-1, 1).to(prob.dtype)
    dims = tuple(range(2, logits.ndim))
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def dice_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dice_weight`` * soft Dice loss + ``ce_weight`` * cross-entropy (both in float32).

    ``class_weights`` [K]: the cross-entropy becomes PyTorch's weighted one (sum over voxels of
    w_y * nll divided by the sum of w_y); the Dice part stays unweighted (MONAI's ``DiceCELoss(weight=)``
    weights its Dice terms too). None is the paper's unweighted loss.
    """
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    ce = F.cross_entropy(logits.float(), labels.long(), weight=weight)
    return dice_weight * soft_dice_loss(logits, labels) + ce_weight * ce


def inverse_sqrt_weights(counts: list[int] | torch.Tensor) -> torch.Tensor:
    """Voxel counts per class [K] -> weights 1 / sqrt(share), scaled to mean 1 (float64 [K]).

    A class with no voxel gets the largest weight of the others (it cannot affect the loss until it is
    present, and must not be infinite when it is). Rare classes get larger weights: a kidney at 0.3 %
    of the voxels weighs about 18x the background at 90 %, rather than 300x under 1 / share.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.ndim != 1 or c.numel() < 2 or (c < 0).any() or c.sum() <= 0:
        raise ValueError(f"class voxel counts must be >= 0 with a positive total, got {c.tolist()}")
    w = torch.zeros_like(c)
    seen = c > 0
    w[seen] = (c.sum() / c[seen]).sqrt()
    w[~seen] = w[seen].max()
    return w / w.mean()


def dice_counts(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard Dice of each foreground class 1..K-1 between integer maps of the same shape.

    Returns (dice [K-1] float64, scored [K-1] float64): a class absent from both maps is not scored
    (dice 0, scored 0); present in one only it scores 0.
    """
    pred, ref = pred.reshape(-1), ref.reshape(-1).to(pred.device)
    k = num_classes
    size_p = torch.bincount(pred.long(), minlength=k)[1:k].double()
    size_r = torch.bincount(ref.long(), minlength=k)[1:k].double()
    both = torch.bincount(pred.long()[pred.long() == ref.long()], minlength=k)[1:k].double()
    denom = size_p + size_r
    scored = (denom > 0).double()
    dice = torch.where(denom > 0, 2.0 * both / denom.clamp_min(1.0), torch.zeros_like(denom))
    return dice, scored


def mean_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard Dice of argmax(logits) [B, K, *S] vs labels [B, *S], averaged over the scored foreground
    classes (pooled over the batch): a 0-d float64 tensor on the logits' device, NaN when no
    foreground is in either."""
    dice, scored = dice_counts(logits.argmax(1), labels, logits.shape[1])
    return dice.sum() / scored.sum()
