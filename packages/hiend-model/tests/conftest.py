"""Tiny models and checkpoints shared by hiend-model's IO tests (checkpoint, inference, predict, cli)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


def tiny_mae_config(**overrides):
    """A 4-block ViT of width 24 on 32^3 crops with patch 16: builds and runs in milliseconds."""
    from hiend_model.config import MAEConfig

    fields = dict(
        img_size=32,
        patch_size=16,
        embed_dim=24,
        depth=4,
        num_heads=2,
        decoder_embed_dim=12,
        decoder_num_heads=2,
        attn_backend="math",
    )
    fields.update(overrides)
    return MAEConfig(**fields)


def tiny_mae(seed: int = 0, **overrides):
    from hiend_model.mae import HiEndMAE

    torch.manual_seed(seed)
    return HiEndMAE(tiny_mae_config(**overrides)).eval()


def tiny_unetr(seed: int = 0, num_classes: int = 3, feature_size: int = 4, **overrides):
    """UNETR on the tiny encoder, with its (random) output layer perturbed so classes differ."""
    from hiend_model.unetr import UNETR

    mae = tiny_mae(seed, **overrides)
    torch.manual_seed(seed + 1)
    model = UNETR.from_mae(mae, num_classes=num_classes, feature_size=feature_size)
    return model.eval()


def tiny_plan():
    """3 mm voxels and 32^3 windows keep the real scans small (about 60 x 50 x 15 after the crop)."""
    from hiend_data import Plan

    return Plan(spacing=(3.0, 3.0, 3.0), crop_size=(32, 32, 32))


@pytest.fixture
def tiny() -> SimpleNamespace:
    """Factories: ``tiny.mae(seed, **cfg)``, ``tiny.unetr(seed, num_classes, feature_size, **cfg)``,
    ``tiny.plan()``, ``tiny.mae_config(**cfg)`` (conftest modules are not importable by tests)."""
    return SimpleNamespace(mae=tiny_mae, unetr=tiny_unetr, plan=tiny_plan, mae_config=tiny_mae_config)


@pytest.fixture
def mae_model():
    return tiny_mae()


@pytest.fixture
def unetr_model():
    return tiny_unetr()


@pytest.fixture
def unetr_ckpt(tmp_path: Path, unetr_model) -> Path:
    """A tiny UNETR checkpoint (.safetensors) with the 3 mm plan."""
    from hiend_model.checkpoint import save_checkpoint

    return save_checkpoint(
        tmp_path / "ckpt" / "tiny_unetr.safetensors", unetr_model, plan=tiny_plan(), extra={"note": "test"}
    )


@pytest.fixture
def mae_ckpt(tmp_path: Path, mae_model) -> Path:
    from hiend_model.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path / "ckpt" / "tiny_mae.safetensors", mae_model, plan=tiny_plan())
