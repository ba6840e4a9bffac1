"""The one vocabulary of model kinds (hiend_model.kinds): names, stages, the paper's layouts, classes."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_model import PRESETS, UNETR, HiEndMAE, UNETRConfig, build
from hiend_model.checkpoint import load_checkpoint, model_kind, read_checkpoint_info, save_checkpoint
from hiend_model.kinds import (
    KINDS,
    MAE_KIND,
    SOURCES,
    UNETR_KIND,
    build_empty,
    get_kind,
    kind_of,
)

TINY = dict(img_size=32, depth=4)


def test_every_name_of_a_kind_finds_it():
    assert set(KINDS) == {"mae", "unetr"}
    assert SOURCES == ("official-pretrain", "official-finetune")
    for alias in ("mae", "pretrain", "official-pretrain"):
        assert get_kind(alias) is MAE_KIND
    for alias in ("unetr", "finetune", "official-finetune"):
        assert get_kind(alias) is UNETR_KIND
    assert MAE_KIND.model_class is HiEndMAE and UNETR_KIND.model_class is UNETR
    with pytest.raises(InputError, match=r"unknown model kind 'vit'; expected one of mae, unetr"):
        get_kind("vit")


def test_kind_of_models_and_the_checkpoint_names():
    mae = build("tiny", **TINY)
    unetr = UNETR.from_mae(mae, num_classes=3, feature_size=4)
    assert (
        kind_of(mae) is MAE_KIND and kind_of(unetr) is UNETR_KIND and kind_of(torch.nn.Linear(2, 2)) is None
    )
    assert model_kind(mae) == "mae" and model_kind(unetr) == "unetr"
    with pytest.raises(InputError, match="cannot save a Linear"):
        model_kind(torch.nn.Linear(2, 2))


def test_build_empty_is_on_meta_and_shaped_like_a_real_model():
    real = build("tiny", **TINY)
    for kind in ("pretrain", MAE_KIND):  # any name of the kind, a dict or a config
        empty, on_meta = build_empty(kind, {**real.config.model_dump()})
        assert on_meta and all(t.is_meta for t in empty.state_dict().values())
        assert {k: v.shape for k, v in empty.state_dict().items()} == {
            k: v.shape for k, v in real.state_dict().items()
        }
    empty, _ = build_empty(MAE_KIND, real.config)
    assert empty.config == real.config
    with pytest.raises(InputError, match="depth"):
        build_empty("mae", {**real.config.model_dump(), "depth": 0})


def test_build_is_the_one_builder_of_both_kinds():
    unetr_cfg = UNETRConfig(**build("tiny", **TINY).config.encoder_fields(), num_classes=3, feature_size=4)
    unetr = build(unetr_cfg)
    assert isinstance(unetr, UNETR) and unetr.config == unetr_cfg
    deeper = build(unetr_cfg, depth=8)
    assert deeper.config.depth == 8 and deeper.config.tap_blocks == (2, 4, 6)
    assert isinstance(build("tiny", **TINY), HiEndMAE) and isinstance(build(PRESETS["tiny"]), HiEndMAE)
    with pytest.raises(InputError, match="num_classes"):
        build(unetr_cfg, num_classes=0)


def test_expected_kind_takes_any_alias(tmp_path):
    mae = build("tiny", **TINY)
    path = save_checkpoint(tmp_path / "m.safetensors", mae)
    assert read_checkpoint_info(path, expected_kind="pretrain").kind == "mae"
    loaded, _ = load_checkpoint(path, expected_kind="official-pretrain")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), mae.state_dict().values(), strict=True)
    )
    with pytest.raises(InputError, match=r"m.safetensors: expected a unetr checkpoint, got mae"):
        read_checkpoint_info(path, expected_kind="finetune")
