"""Patch order, sin-cos formula and encoder plumbing."""

from __future__ import annotations

import math

import pytest
import torch

from hiend_model.vit import ViTEncoder, patchify, sincos_pos_embed_3d, unpatchify


@pytest.mark.parametrize(("shape", "p"), [((2, 1, 16, 24, 8), 8), ((1, 2, 12, 12, 24), 12)])
def test_patchify_round_trip_and_order(shape, p):
    x = torch.randn(*shape)
    patches = patchify(x, p)
    B, C, H, W, D = shape
    g = (H // p, W // p, D // p)
    assert patches.shape == (B, math.prod(g), p**3 * C)
    # token t = (i, j, k) row-major; value index = ((a * p + b) * p + c) * C + ch
    i, j, k, a, b, c, ch = g[0] - 1, 0, g[2] - 1, 1, p - 1, 2, C - 1
    t = (i * g[1] + j) * g[2] + k
    v = ((a * p + b) * p + c) * C + ch
    assert patches[0, t, v] == x[0, ch, i * p + a, j * p + b, k * p + c]
    torch.testing.assert_close(unpatchify(patches, p, g, C), x, rtol=0, atol=0)


def test_linear_patch_embedding_equals_conv3d():
    torch.manual_seed(0)
    p, C, Dm = 4, 2, 6
    conv = torch.nn.Conv3d(C, Dm, p, stride=p)
    x = torch.randn(2, C, 8, 12, 4)
    want = conv(x).flatten(2).transpose(1, 2)
    w = conv.weight.permute(0, 2, 3, 4, 1).reshape(Dm, -1)
    got = patchify(x, p) @ w.T + conv.bias
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sincos_formula_by_hand():
    grid, dim = (2, 3, 4), 12
    pe = sincos_pos_embed_3d(grid, dim)
    k = dim // 6
    assert pe.shape == (24, 12)
    t = (1 * 3 + 2) * 4 + 3  # position (h=1, w=2, d=3)
    for i in range(k):
        f = 1 / 10000 ** (i / k)
        want = [
            math.sin(1 * f),
            math.cos(1 * f),
            math.sin(2 * f),
            math.cos(2 * f),
            math.sin(3 * f),
            math.cos(3 * f),
        ]
        got = [pe[t, part * k + i].item() for part in range(6)]
        assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_pos_embed_3d(grid, 16)


def test_encoder_outputs_and_checkpointing_agree():
    torch.manual_seed(0)
    kw = dict(grid=(2, 2, 2), patch_dim=8, embed_dim=12, depth=3, num_heads=3, pos_embed="learned")
    enc = ViTEncoder(**kw)
    enc_ck = ViTEncoder(**kw, grad_checkpointing=True)
    enc_ck.load_state_dict(enc.state_dict())
    x = torch.randn(2, 8, 8)
    out, blocks = enc(x)
    assert out.shape == (2, 9, 12) and len(blocks) == 3
    torch.testing.assert_close(enc.norm(blocks[-1]), out)
    out.sum().backward()
    out2, _ = enc_ck(x)
    out2.sum().backward()
    torch.testing.assert_close(out, out2)
    for (n, a), b in zip(enc.named_parameters(), enc_ck.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    enc = ViTEncoder(grid=(2, 2, 2), patch_dim=8, embed_dim=12, depth=2, num_heads=3, drop_path=0.5)
    x = torch.randn(4, 8, 8)
    enc.eval()
    a, _ = enc(x)
    b, _ = enc(x)
    torch.testing.assert_close(a, b)
    enc.train()
    outs = {tuple(enc(x)[0].flatten()[:4].tolist()) for _ in range(6)}
    assert len(outs) > 1
