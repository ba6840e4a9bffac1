"""Parity with the paper's reference outputs (../shared/reference fixtures, see its README)."""

from __future__ import annotations

import pytest
import torch

from hiend_model import load_official_finetuned, load_official_pretrained
from hiend_model.official import export_official_pretrained


def _mae_arch(c: dict) -> dict:
    return dict(
        img_size=c["img"],
        patch_size=c["patch"],
        in_chans=c["in_chans"],
        embed_dim=c["enc_dim"],
        depth=c["depth"],
        num_heads=c["enc_heads"],
        decoder_embed_dim=c["dec_dim"],
        decoder_num_heads=c["dec_heads"],
        decoder_depth=c["decoder_self_depth"],
        cross_depth=c["decoder_cross_depth"],
        mlp_ratio=c["mlp_ratio"],
        qkv_bias=c["qkv_bias"],
        layer_norm_eps=c["layernorm_eps"],
        mask_ratio=c["mask_ratio"],
        pos_embed={"sincos": "sincos", "perceptron": "learned"}[c["pos"]],
    )


@pytest.fixture(scope="module")
def mae_fixture(shared_reference):
    return torch.load(shared_reference / "hiend_mae_parity_tiny.pt", weights_only=True)


@pytest.mark.parametrize("wrapped", [False, True])
def test_hiend_mae_parity(mae_fixture, wrapped):
    fx = mae_fixture
    sd = fx["state_dict"]
    if wrapped:  # the released file's wrapping
        sd = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    model = load_official_pretrained(sd, **_mae_arch(fx["config"]))
    with torch.no_grad():
        out = model(fx["input"], fx["noise"])
    ref_loss = fx["loss"].item()
    assert abs(out.loss.item() - ref_loss) <= 1e-5 * abs(ref_loss)
    ids_shuffle = fx["noise"].argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ref = fx["decoder_output"][:, 1:]
    ref = ref.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, ref.shape[-1]))
    assert (out.pred - ref).abs().max().item() <= 1e-4
    keep = int(ids_shuffle.shape[1] * (1 - 0.75))
    assert out.mask.sum(1).tolist() == [ids_shuffle.shape[1] - keep] * 2
    rec = fx["reconstruction"]
    _, ours = model.reconstruct(fx["input"], out, paste_visible=False)
    diff = (model.patchify(ours) - rec).abs().max() / rec.abs().max()
    assert diff.item() <= 1e-4


def test_export_reproduces_the_paper_state_dict(mae_fixture):
    sd = mae_fixture["state_dict"]
    model = load_official_pretrained(sd, **_mae_arch(mae_fixture["config"]))
    back = export_official_pretrained(model)
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def test_unetr_parity(shared_reference):
    fx = torch.load(shared_reference / "unetr_parity_tiny.pt", weights_only=True)
    c = fx["config"]
    model = load_official_finetuned(
        fx["state_dict"],
        img_size=c["img"],
        patch_size=c["patch"],
        embed_dim=c["hidden"],
        depth=c["depth"],
        num_heads=c["heads"],
        mlp_ratio=c["mlp_dim"] / c["hidden"],
        feature_size=c["feature"],
        num_classes=c["classes"],
    )
    assert model.config.layer_norm_eps == 1e-5
    with torch.no_grad():
        logits = model(fx["input"])
    assert logits.shape == (1, c["classes"], 96, 96, 96)
    ref = fx["logits_every_4th_voxel"]
    assert (logits[:, :, ::4, ::4, ::4] - ref).abs().max().item() <= 1e-4
    agree = (logits.argmax(1) == fx["argmax"].long()).float().mean().item()
    assert agree >= 0.9999
