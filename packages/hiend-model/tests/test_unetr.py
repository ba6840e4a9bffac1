"""UNETR shapes at non-96 inputs, transfer from HiEndMAE, a training step, bad input."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_model import UNETR, MAEConfig, UNETRConfig, build

ENC = dict(embed_dim=24, depth=4, num_heads=2, tap_blocks=(1, 2, 3))


@pytest.mark.parametrize(
    ("size", "patch", "final"), [((48, 64, 80), 16, "transpose"), ((36, 48, 60), 12, "resize")]
)
def test_output_has_the_input_size(size, patch, final):
    torch.manual_seed(0)
    model = UNETR(UNETRConfig(img_size=size, patch_size=patch, num_classes=3, feature_size=4, **ENC)).eval()
    assert model.config.final_upsample == final
    with torch.no_grad():
        logits = model(torch.rand(1, 1, *size))
    assert logits.shape == (1, 3, *size)
    assert torch.isfinite(logits).all()


def _mae(**kw):
    torch.manual_seed(0)
    return build(
        MAEConfig(img_size=32, patch_size=16, decoder_embed_dim=12, decoder_num_heads=2, **ENC, **kw)
    )


@pytest.mark.parametrize("pos", ["sincos", "learned"])
def test_from_mae_carries_the_encoder(pos):
    mae = _mae(pos_embed=pos, layer_norm_eps=1e-6)
    unetr = UNETR.from_mae(mae, num_classes=2, feature_size=4)
    assert unetr.config.layer_norm_eps == 1e-6 and unetr.config.embed_dim == 24
    assert isinstance(unetr.encoder.pos_embed, torch.nn.Parameter)
    assert unetr.encoder.cls_token is None
    src = mae.encoder.state_dict()
    for k, v in unetr.encoder.state_dict().items():
        assert torch.equal(v, src[k]), k
    # the encoder alone computes what the MAE's encoder computes on all tokens without the class token
    x = torch.rand(1, 1, 32, 32, 32)
    patches = mae.patchify(x)
    with torch.no_grad():
        want = mae.encoder.run_blocks(mae.encoder.patch_embed(patches) + mae.encoder.pos_embed)[0]
        got = unetr.encoder(patches)[0]
    torch.testing.assert_close(got, want)


def test_from_mae_checkpoints(tmp_path):
    from hiend_model.checkpoint import save_checkpoint
    from hiend_model.official import export_official_pretrained
    from hiend_model.pretrained import load_unetr_init

    mae = _mae()
    path = tmp_path / "mae.safetensors"
    save_checkpoint(path, mae)
    a = load_unetr_init(path, num_classes=2, feature_size=4)
    torch.testing.assert_close(a.encoder.pos_embed, mae.encoder.pos_embed)
    # the paper's layout (a state dict or a .pth) with its architecture
    b = load_unetr_init(
        export_official_pretrained(mae, wrap=True),
        num_classes=2,
        feature_size=4,
        arch=mae.config.model_dump(),
    )
    assert all(torch.equal(b.encoder.state_dict()[k], v) for k, v in a.encoder.state_dict().items())
    # the paper's layout without an architecture means the released ViT-L/12: sizes are checked
    with pytest.raises(InputError, match="released ViT-L/12.*embed_dim 24"):
        load_unetr_init(export_official_pretrained(mae, wrap=True), num_classes=2)
    # from_mae itself takes a model; a path gets a one-line error that names the loader
    with pytest.raises(InputError, match="from_mae needs a HiEndMAE, got .*load_unetr_init"):
        UNETR.from_mae(path, num_classes=2)
    with pytest.raises(InputError):
        UNETR.from_mae(42, num_classes=2)


def test_unetr_from_mae_trains():
    torch.manual_seed(0)
    unetr = UNETR.from_mae(_mae(), num_classes=3, feature_size=4)
    x = torch.rand(2, 1, 32, 32, 32)
    y = (x[:, 0] * 3).long().clamp(max=2)
    opt = torch.optim.AdamW(unetr.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(unetr(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.93 * losses[0], losses
    assert unetr.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("shape", "word"),
    [
        ((1, 2, 32, 32, 32), "channels"),
        ((1, 1, 32, 32, 40), "divisible"),
        ((1, 1, 32, 32, 48), "img_size"),
        ((32, 32, 32), "shape"),
    ],
)
def test_bad_input(shape, word):
    model = UNETR(UNETRConfig(img_size=32, patch_size=16, num_classes=2, feature_size=4, **ENC))
    with pytest.raises(InputError, match=word):
        model(torch.rand(*shape))


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        (dict(num_classes=0), "num_classes"),
        (dict(img_size=(32, 32, 40)), "img_size"),
        (dict(tap_blocks=(1, 2)), "tap_blocks"),
    ],
)
def test_config_errors(fields, word):
    base = dict(img_size=32, patch_size=16, num_classes=2, feature_size=4, **ENC)
    with pytest.raises(ValueError, match=word):
        UNETRConfig(**{**base, **fields})


def test_instance_norm_equals_torch_instance_norm():
    from hiend_model.unetr import InstanceNorm

    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7, 8, requires_grad=True)
    g = torch.randn(2, 5, 6, 7, 8)
    a = InstanceNorm(1e-5)(x)
    b = torch.nn.functional.instance_norm(x, eps=1e-5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    (ga,) = torch.autograd.grad(a, x, g)
    (gb,) = torch.autograd.grad(b, x, g)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)
