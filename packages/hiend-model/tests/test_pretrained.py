"""A pre-training model from a file of either format (hiend_model.pretrained)."""

from __future__ import annotations

import pytest
import torch

import hiend_model
from hiend_data.errors import InputError
from hiend_model import official, pretrained
from hiend_model.checkpoint import save_checkpoint
from hiend_model.official import export_official_pretrained


def test_either_format_gives_the_same_model(tmp_path, mae_model):
    path = save_checkpoint(tmp_path / "m.safetensors", mae_model)
    from_hiend = pretrained.load_pretrained_mae(path)
    from_paper = pretrained.load_pretrained_mae(
        export_official_pretrained(mae_model), **{**mae_model.config.model_dump(), "pos_embed": "sincos"}
    )
    for model in (from_hiend, from_paper):
        sa, sb = mae_model.state_dict(), model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(
        InputError, match="m.safetensors: a hiend checkpoint holds its architecture; num_heads"
    ):
        pretrained.load_pretrained_mae(path, num_heads=2)


def test_one_home_for_loading_either_format():
    # hiend_model.pretrained is the one module (official.py is about the paper's files only)
    assert pretrained.load_unetr_init is hiend_model.load_unetr_init
    assert pretrained.load_pretrained_mae is hiend_model.load_pretrained_mae
    assert not hasattr(official, "load_unetr_init") and not hasattr(official, "load_pretrained_mae")
