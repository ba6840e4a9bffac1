"""The optimisation recipe: warm-up + cosine values, and which parameters decay."""

from __future__ import annotations

import math

import pytest
import torch

from hiend_train.optim import build_optimizer, decays, lr_at, param_groups


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # warm-up starts at zero
        (5, 0.5e-3),  # half-way through the warm-up: half the peak
        (10, 1e-3),  # end of warm-up: the peak
        (55, 0.5 * (1e-3 + 1e-5)),  # half-way through the cosine: mean of peak and floor
        (32.5, 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter of the cosine
        (100, 1e-5),  # the end: the floor
        (150, 1e-5),  # past the end: stays at the floor
    ],
)
def test_lr_schedule_at_known_points(step, expected):
    assert lr_at(step, base_lr=1e-3, warmup_steps=10, total_steps=100, min_lr=1e-5) == pytest.approx(
        expected, rel=1e-12
    )


def test_lr_schedule_is_monotone_up_then_down():
    values = [lr_at(s, 1e-4, 20, 200) for s in range(201)]
    assert values[:21] == sorted(values[:21])
    assert values[20:] == sorted(values[20:], reverse=True)


def test_lr_schedule_without_warmup_starts_at_the_peak():
    assert lr_at(0, 2e-4, 0, 10) == pytest.approx(2e-4)
    assert lr_at(10, 2e-4, 0, 10) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("name", "ndim", "expected"),
    [
        ("encoder.blocks.0.attn.qkv.weight", 2, True),
        ("encoder.patch_embed.proj.weight", 2, True),
        ("decoder5.transp_conv.weight", 5, True),
        ("encoder.blocks.0.attn.qkv.bias", 1, False),
        ("encoder.norm.weight", 1, False),
        ("encoder.pos_embed", 3, False),
        ("encoder.cls_token", 3, False),
        ("mask_token", 3, False),
        ("module.mask_token", 3, False),
    ],
)
def test_decay_rule(name, ndim, expected):
    assert decays(name, ndim) is expected


def test_param_groups_of_the_mae_with_learned_position_embedding():
    from hiend_model import build

    model = build("tiny", img_size=32, depth=4, pos_embed="learned")
    groups = param_groups(model.named_parameters(), 0.05)
    decay, no_decay = set(groups[0]["names"]), set(groups[1]["names"])
    named = dict(model.named_parameters())
    assert decay | no_decay == set(named) and not decay & no_decay
    assert {
        "encoder.pos_embed",
        "encoder.cls_token",
        "mask_token",
        "encoder.norm.weight",
        "encoder.norm.bias",
        "encoder.blocks.0.attn.qkv.bias",
    } <= no_decay
    assert {
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.patch_embed.proj.weight",
        "decoder.head.weight",
    } <= decay
    assert all(named[n].ndim >= 2 for n in decay)
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0


def test_optimizer_carries_the_recipe():
    from hiend_model import UNETR, build

    model = UNETR.from_mae(build("tiny", img_size=32, depth=4), num_classes=3, feature_size=4)
    frozen = next(model.encoder1.parameters()).requires_grad_(False)  # frozen parameters are left out
    opt = build_optimizer(model, lr=1e-4, weight_decay=1e-5, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-5, 0.0]
    assert all(g["betas"] == (0.9, 0.95) and g["lr"] == 1e-4 for g in opt.param_groups)
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable and id(frozen) not in in_groups
    # the learned UNETR position embedding never decays
    pos = model.encoder.pos_embed
    assert any(p is pos for p in opt.param_groups[1]["params"])
