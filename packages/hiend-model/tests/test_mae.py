"""HiEndMAE pieces against values computed by hand; configs, presets and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hiend_data.errors import InputError
from hiend_model import PRESETS, HiEndMAE, MAEConfig, build
from hiend_model.config import resolve_config

SMALL = dict(
    img_size=(16, 24, 16),
    patch_size=8,
    embed_dim=24,
    depth=4,
    num_heads=2,
    decoder_embed_dim=12,
    decoder_num_heads=3,
    tap_blocks=(1, 2, 3),
)


@pytest.fixture(scope="module")
def small() -> HiEndMAE:
    torch.manual_seed(0)
    return build(MAEConfig(**SMALL)).eval()


def test_masking_loss_and_pred_by_hand(small):
    torch.manual_seed(1)
    x = torch.rand(2, 1, 16, 24, 16)
    noise = torch.rand(2, 12)
    out = small(x, noise)
    keep = int(12 * 0.25)
    assert out.pred.shape == (2, 12, 512) and out.mask.dtype == torch.bool
    ids = noise.argsort(1)
    for b in range(2):
        assert set(torch.nonzero(~out.mask[b]).flatten().tolist()) == set(ids[b, :keep].tolist())
    assert int(out.mask.sum()) == 2 * (12 - keep)
    target = F.layer_norm(small.patchify(x), (512,), eps=1e-6)
    per_token = (out.pred - target).square().mean(-1)
    want = (per_token * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-7)


def test_visible_tokens_do_not_see_masked_content(small):
    """Changing masked patches changes nothing: the encoder sees only visible patches."""
    torch.manual_seed(2)
    x = torch.rand(1, 1, 16, 24, 16)
    noise = torch.rand(1, 12)
    out = small(x, noise)
    patches = small.patchify(x).clone()
    patches[out.mask] = 5.0
    out2 = small(small.unpatchify(patches), noise)
    torch.testing.assert_close(out.pred, out2.pred)


def test_reconstruct_unnormalises_and_pastes(small):
    torch.manual_seed(3)
    x = torch.rand(2, 1, 16, 24, 16)
    out = small(x)
    masked, rec = small.reconstruct(x, out)
    assert masked.shape == rec.shape == x.shape
    p, pr = small.patchify(x), small.patchify(rec)
    m = out.mask
    torch.testing.assert_close(pr[~m], p[~m], rtol=0, atol=0)
    want = out.pred * (p.std(-1, keepdim=True) + 1e-6) + p.mean(-1, keepdim=True)
    torch.testing.assert_close(pr[m], want[m])
    assert (small.patchify(masked)[m] == 0).all()
    _, raw = small.reconstruct(x, out, paste_visible=False)
    torch.testing.assert_close(small.patchify(raw), want)


def test_backward_reaches_every_trainable_parameter(small):
    model = build(MAEConfig(**SMALL, pos_embed="learned"))
    out = model(torch.rand(2, 1, 16, 24, 16))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []
    assert "encoder.pos_embed" in dict(model.named_parameters())
    assert "encoder.pos_embed" not in dict(small.named_parameters())  # sin-cos: a fixed buffer


def test_presets_sizes():
    b16, l12 = PRESETS["vit-b16"], PRESETS["vit-l12"]
    assert (b16.embed_dim, b16.num_heads, b16.decoder_embed_dim, b16.patch_size) == (768, 12, 384, 16)
    assert (l12.embed_dim, l12.num_heads, l12.decoder_embed_dim, l12.patch_size) == (1536, 16, 528, 12)
    assert PRESETS["vit-l16"].patch_size == 16 and l12.tap_blocks == (3, 6, 9)
    assert sum(p.numel() for p in build("tiny").parameters()) < 3_000_000


def test_unknown_preset_lists_known():
    with pytest.raises(InputError, match=r"vit-b99.*vit-b16.*tiny"):
        build("vit-b99")


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        (dict(img_size=50), "img_size"),
        (dict(embed_dim=26, num_heads=4, pos_embed="learned"), "embed_dim=26"),
        (dict(num_heads=7), "num_heads"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "mask_ratio=0.0"),
        (dict(bogus=1), "bogus"),
        (dict(attn_backend="flash"), "attn_backend"),
        (dict(embed_dim=20, num_heads=2), "divisible by 6"),
        (dict(tap_blocks=(3, 2, 1)), "tap_blocks"),
    ],
)
def test_config_errors_name_the_value(fields, word):
    with pytest.raises(InputError, match=word):
        resolve_config("tiny", **fields)


def test_config_round_trips_through_json():
    cfg = resolve_config("vit-b16", depth=8)
    assert cfg.tap_blocks == (2, 4, 6)
    assert MAEConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(
    ("shape", "word"),
    [((1, 2, 16, 24, 16), "channels"), ((1, 1, 16, 16, 16), "img_size"), ((1, 16, 24, 16), "shape")],
)
def test_bad_images(small, shape, word):
    with pytest.raises(InputError, match=word):
        small(torch.rand(*shape))


def test_bad_noise(small):
    # (NaN or inf images are refused where they enter, not in the forward: test_input_values.py)
    with pytest.raises(InputError, match="noise"):
        small(torch.rand(1, 1, 16, 24, 16), torch.rand(1, 5))


def test_pretraining_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build(MAEConfig(**SMALL)).train()
    g = torch.linspace(0, 6.28, 24)
    x = (g[:16, None, None].sin() * g[None, :, None].cos() * g[None, None, :16].sin()).expand(
        2, 1, 16, 24, 16
    )
    noise = torch.rand(2, 12)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(6):
        loss = model(x, noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.97 * losses[0], losses
