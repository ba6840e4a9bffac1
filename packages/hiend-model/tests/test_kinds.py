"""The one vocabulary of model kinds (hiend_model.kinds): names, stages, the paper's layouts, classes."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_model import UNETR, HiEndMAE, build
from hiend_model.checkpoint import load_checkpoint, model_kind, read_checkpoint_info, save_checkpoint
from hiend_model.kinds import (
    KINDS,
    MAE_KIND,
    SOURCES,
    UNETR_KIND,
    build_empty,
    build_model,
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
    real = build_model("pretrain", {**build("tiny", **TINY).config.model_dump()})
    empty, on_meta = build_empty(MAE_KIND, real.config)
    assert on_meta and all(t.is_meta for t in empty.state_dict().values())
    assert {k: v.shape for k, v in empty.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }
    with pytest.raises(InputError, match="depth"):
        build_model("mae", {**real.config.model_dump(), "depth": 0})


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
