"""Dice + cross-entropy against MONAI's DiceCELoss, and hard Dice on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

from hiend_train.losses import dice_ce_loss, dice_counts, mean_dice


@pytest.mark.parametrize("shape", [(2, 4, 6, 5, 7), (1, 2, 8, 8, 8)])
def test_dice_ce_matches_monai(shape):
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g) * 2
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    labels[0, :2] = 0  # some classes rarer than others
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels.unsqueeze(1))
    ours = dice_ce_loss(logits, labels)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    weighted = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.3, lambda_ce=2.0)(
        logits, labels.unsqueeze(1)
    )
    assert float(dice_ce_loss(logits, labels, 0.3, 2.0)) == pytest.approx(float(weighted), rel=1e-5)


def test_dice_counts_by_hand():
    ref = torch.tensor([0, 1, 1, 2, 2, 2, 0, 0])
    pred = torch.tensor([0, 1, 0, 2, 2, 0, 0, 3])
    dice, scored = dice_counts(pred, ref, num_classes=5)
    # class 1: |P|=1 |R|=2 both 1 -> 2/3; class 2: 2, 3, 2 -> 4/5; class 3: only predicted -> 0;
    # class 4: in neither -> not scored
    assert dice.tolist() == pytest.approx([2 / 3, 4 / 5, 0.0, 0.0])
    assert scored.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_mean_dice_of_logits():
    labels = torch.tensor([[[[0, 1], [1, 2]]]])  # [1, 1, 2, 2]
    logits = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()  # perfect
    assert float(mean_dice(logits, labels)) == pytest.approx(1.0)
    assert math.isnan(
        float(
            mean_dice(
                torch.zeros(1, 3, 1, 2, 2).index_fill_(1, torch.tensor([0]), 1.0),
                torch.zeros(1, 1, 2, 2, dtype=torch.long),
            )
        )
    )


def test_class_weighted_ce_by_hand():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    w = torch.tensor([0.5, 1.0, 2.5])
    # by hand: sum over voxels of w_y * (-log softmax_y) / sum of w_y, plus the unweighted Dice
    logp = logits.log_softmax(1)
    nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1)
    ce = float((w[labels] * nll).sum() / w[labels].sum())
    dice_only = float(dice_ce_loss(logits, labels, ce_weight=0.0))
    assert float(dice_ce_loss(logits, labels, class_weights=w)) == pytest.approx(dice_only + ce, rel=1e-6)


def test_inverse_sqrt_weights_by_hand():
    from hiend_train.losses import inverse_sqrt_weights

    # shares 0.9, 0.1, absent: 1/sqrt(share) = 1.0541, 3.1623, (absent: the largest) 3.1623; mean 2.4596
    w = inverse_sqrt_weights([900, 100, 0])
    assert w.tolist() == pytest.approx([0.428571, 1.285714, 1.285714], rel=1e-5)
    assert float(w.mean()) == pytest.approx(1.0)
    assert inverse_sqrt_weights([5, 5]).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="counts"):
        inverse_sqrt_weights([0, 0])
