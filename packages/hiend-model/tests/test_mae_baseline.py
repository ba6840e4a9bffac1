"""The paper's ablation baseline, plain MAE (He et al. 2022): ``MAEConfig.decoder="plain"`` (``"mae"``,
its old name, still accepted and read from saved checkpoints).

Only the final normed encoder output is projected (``decoder_embed``), then ``decoder_depth`` (default 5)
plain self-attention blocks, norm and head; masking, loss, outputs and checkpoints as for Hi-End-MAE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from hiend_data.errors import InputError
from hiend_model import PRESETS, UNETR, HiEndMAE, MAEConfig, build
from hiend_model.checkpoint import load_checkpoint, save_checkpoint
from hiend_model.config import resolve_config
from hiend_model.decoder_blocks import CrossBlock, PlainMAEDecoder
from hiend_model.official import export_official_pretrained, load_official_pretrained
from hiend_model.pretrained import load_unetr_init


@pytest.fixture(scope="module")
def mae() -> HiEndMAE:
    torch.manual_seed(0)
    return build("tiny", decoder="plain", attn_backend="math").eval()


def _batch(seed: int, B: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, 48, 48, 48, generator=g), torch.rand(B, 216, generator=g)


# -- config ----------------------------------------------------------------------------------------
def test_config_defaults_and_overrides():
    hi, plain = MAEConfig(), MAEConfig(decoder="plain")
    assert (hi.decoder, hi.decoder_depth, hi.cross_depth) == ("hiend", 2, 3)
    assert (plain.decoder, plain.decoder_depth, plain.cross_depth) == ("plain", 5, 0)
    assert MAEConfig(decoder="mae") == plain  # the old name of the same decoder
    assert plain.tap_blocks == (3, 6, 9)  # still the UNETR's skips
    # Presets carry numbers; switching the decoder re-derives the depths unless they are given.
    cfg = resolve_config("vit-b16", decoder="plain")
    assert resolve_config("vit-b16", decoder="mae") == cfg
    assert (cfg.decoder_depth, cfg.cross_depth) == (5, 0)
    assert resolve_config("tiny", decoder="mae", decoder_depth=8).decoder_depth == 8
    assert resolve_config("tiny", decoder="mae", decoder_depth=0).decoder_depth == 0
    back = resolve_config(cfg, decoder="hiend")
    assert back == PRESETS["vit-b16"]
    assert (
        resolve_config(resolve_config("tiny", decoder="mae", decoder_depth=3), mask_ratio=0.5).decoder_depth
        == 3
    )
    assert MAEConfig.model_validate_json(cfg.model_dump_json()) == cfg
    # A config written before the field existed (explicit depths, no decoder) is Hi-End-MAE.
    old = {k: v for k, v in PRESETS["tiny"].model_dump(mode="json").items() if k != "decoder"}
    assert MAEConfig(**old) == PRESETS["tiny"]


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        (dict(decoder="mae", cross_depth=3), "cross_depth=3"),
        (dict(decoder="plain", cross_depth=3), "cross_depth=3"),
        (dict(decoder="vit"), "decoder"),
        (dict(decoder="mae", decoder_depth=-1), "decoder_depth=-1"),
    ],
)
def test_config_errors(fields, word):
    with pytest.raises(InputError, match=word):
        resolve_config("tiny", **fields)


# -- the computation -------------------------------------------------------------------------------
def _block_by_hand(blk, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm self-attention block from its weights: qkv split (3, heads, head_dim), softmax, MLP."""
    B, N, C = x.shape
    H = blk.attn.num_heads
    h = F.layer_norm(x, (C,), blk.norm1.weight, blk.norm1.bias, 1e-6)
    q, k, v = (
        F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).view(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    )
    a = ((q @ k.transpose(-1, -2)) / math.sqrt(C // H)).softmax(-1) @ v
    x = x + F.linear(a.transpose(1, 2).reshape(B, N, C), blk.attn.proj.weight, blk.attn.proj.bias)
    h = F.layer_norm(x, (C,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    h = F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias))
    return x + F.linear(h, blk.mlp.fc2.weight, blk.mlp.fc2.bias)


@torch.no_grad()
def test_forward_equals_reference_computation(mae):
    x, noise = _batch(1)
    out = mae(x, noise)
    B, L, P, keep = 2, 216, 512, int(216 * 0.25)
    patches = mae.patchify(x)
    ids = noise.argsort(1)
    vis = patches.gather(1, ids[:, :keep, None].expand(-1, -1, P))
    enc = mae.encoder
    t = enc.patch_embed.proj(vis) + enc.pos_embed[0][ids[:, :keep]]
    t = torch.cat([enc.cls_token.expand(B, -1, -1), t], 1)
    for blk in enc.blocks:
        t = blk(t)
    latent = enc.norm(t)
    y = mae.decoder_embed(latent)  # the one projection
    Dd = y.shape[-1]
    tokens = torch.cat([y[:, 1:], mae.mask_token.expand(B, L - keep, Dd)], 1) + mae.decoder_pos_embed[0][ids]
    y = torch.cat([y[:, :1], tokens], 1)
    assert len(mae.decoder.blocks) == 5
    for blk in mae.decoder.blocks:
        y = _block_by_hand(blk, y)
    y = F.layer_norm(y, (Dd,), mae.decoder.norm.weight, mae.decoder.norm.bias, 1e-6)
    head = F.linear(y[:, 1:], mae.decoder.head.weight, mae.decoder.head.bias)  # shuffled order
    pred = torch.empty_like(head).scatter_(1, ids[:, :, None].expand(-1, -1, P), head)
    target = F.layer_norm(patches, (P,), eps=1e-6)
    mask = torch.zeros(B, L, dtype=torch.bool).scatter_(1, ids[:, keep:], True)
    loss = (pred - target).square().mean(-1)[mask].mean()
    assert torch.equal(out.mask, mask)
    torch.testing.assert_close(out.pred, pred, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    # The predictions of visible tokens are real (not the target) yet do not enter the loss.
    assert (pred - target)[~mask].abs().mean() > 0.1
    masked_rec, rec = mae.reconstruct(x, out)
    assert masked_rec.shape == rec.shape == x.shape


def test_loss_gradient_comes_from_masked_rows_only():
    """d loss / d (normed decoder tokens) is zero on the class token and every visible token and non-zero
    on every masked one: the head and everything below it learn from masked patches only."""
    torch.manual_seed(0)
    model = build("tiny", decoder="plain", attn_backend="math")
    x, noise = _batch(2)
    seen = {}

    def keep_grad(_module, _inputs, output):
        output.retain_grad()
        seen["feats"] = output

    handle = model.decoder.norm.register_forward_hook(keep_grad)
    out = model(x, noise)
    out.loss.backward()
    handle.remove()
    g = seen["feats"].grad  # [B, 1 + L, Dd] in shuffled order: class, visible, masked
    keep = int(216 * 0.25)
    assert g.shape == (2, 217, 48)
    assert torch.count_nonzero(g[:, : 1 + keep]) == 0
    assert (g[:, 1 + keep :].abs().sum(-1) > 0).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


# -- structure -------------------------------------------------------------------------------------
def test_no_cross_attention_and_one_projection(mae):
    assert isinstance(mae.decoder, PlainMAEDecoder)
    assert not any(isinstance(m, CrossBlock) or getattr(m, "cross", False) for m in mae.modules())
    assert not hasattr(mae, "encoder_to_decoder")
    linears_from_encoder_width = [
        n
        for n, m in mae.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.startswith("encoder.") and m.in_features == 96
    ]
    assert linears_from_encoder_width == ["decoder_embed"]
    keys = {k for k in mae.state_dict() if not k.startswith("encoder.")}
    blocks = {k for k in keys if k.startswith("decoder.blocks.")}
    assert keys - blocks == {
        "decoder_embed.weight",
        "decoder_embed.bias",
        "mask_token",
        "decoder_pos_embed",
        "decoder.norm.weight",
        "decoder.norm.bias",
        "decoder.head.weight",
        "decoder.head.bias",
    }
    assert {k.split(".")[2] for k in blocks} == {"0", "1", "2", "3", "4"}


def test_same_encoder_as_hiend(mae):
    torch.manual_seed(0)
    hi = build("tiny", attn_backend="math")
    ea, eb = hi.encoder.state_dict(), mae.encoder.state_dict()
    assert list(ea) == list(eb)
    assert {k: v.shape for k, v in ea.items()} == {k: v.shape for k, v in eb.items()}
    # and the whole encoder (weights and the computation) transfers between the two
    mae2 = build("tiny", decoder="plain", attn_backend="math").eval()
    mae2.load_state_dict({**mae2.state_dict(), **{f"encoder.{k}": v for k, v in ea.items()}})
    x, noise = _batch(3)
    ids = noise.argsort(1)[:, :54]
    with torch.no_grad():
        torch.testing.assert_close(
            mae2.forward_encoder(mae2.patchify(x), ids)[0],
            hi.eval().forward_encoder(hi.patchify(x), ids)[0],
            rtol=0,
            atol=0,
        )


def _block_params(d: int, mlp_ratio: float = 4.0) -> int:
    h = int(d * mlp_ratio)
    return 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d)


def _cross_block_params(d: int, mlp_ratio: float = 4.0) -> int:
    # norm0 + self-attention block, norm1 + cross-attention (q, kv, proj): the same sizes again
    return _block_params(d, mlp_ratio) + 2 * d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)


def expected_params(cfg: MAEConfig) -> tuple[int, int]:
    """(encoder, decoder) trainable parameters by formula; decoder = everything outside ``encoder.``
    (projections, mask token, blocks, norm, head)."""
    D, Dd, P = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_dim
    enc = (P * D + D) + D + cfg.depth * _block_params(D, cfg.mlp_ratio) + 2 * D
    if cfg.pos_embed == "learned":
        enc += cfg.num_patches * D
    n_proj = 1 if cfg.decoder == "plain" else len(cfg.tap_blocks) + 1
    dec = (
        n_proj * (D * Dd + Dd)
        + Dd
        + cfg.decoder_depth * _block_params(Dd, cfg.mlp_ratio)
        + cfg.cross_depth * _cross_block_params(Dd, cfg.mlp_ratio)
        + 2 * Dd
        + (Dd * P + P)
    )
    return enc, dec


def _count(model: HiEndMAE) -> tuple[int, int]:
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    return enc, sum(p.numel() for p in model.parameters()) - enc


def test_parameter_counts_tiny_exact(mae):
    torch.manual_seed(0)
    hi = build("tiny")
    # tiny: D 96, 12 blocks, Dd 48, P 512. Block(96) 111 840, Block(48) 28 272, CrossBlock(48) 37 776.
    assert _count(hi) == expected_params(hi.config) == (1_391_616, 213_728)
    assert _count(mae) == expected_params(mae.config) == (1_391_616, 171_248)


@pytest.mark.parametrize("preset", ["vit-b16", "vit-l12", "vit-l16", "tiny"])
@pytest.mark.parametrize("decoder", ["hiend", "plain"])
def test_parameter_counts_by_formula_at_every_preset(preset, decoder):
    with torch.device("meta"):  # sizes only
        model = build(preset, decoder=decoder)
    assert _count(model) == expected_params(model.config)


# -- checkpoints, official layout, UNETR -----------------------------------------------------------
def test_checkpoint_round_trip_is_bit_identical(tmp_path: Path, mae):
    path = save_checkpoint(tmp_path / "plain.safetensors", mae)
    model, info = load_checkpoint(path, expected_kind="mae")
    assert info.kind == "mae" and info.config["decoder"] == "plain"
    assert (info.config["decoder_depth"], info.config["cross_depth"]) == (5, 0)
    assert model.config == mae.config and isinstance(model.decoder, PlainMAEDecoder)
    sa, sb = mae.state_dict(), model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x, noise = _batch(4, B=1)
    with torch.no_grad():
        a, b = mae(x, noise), model(x, noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask)


def test_checkpoint_written_before_the_field_loads_as_hiend(tmp_path: Path):
    torch.manual_seed(0)
    hi = build("tiny", attn_backend="math").eval()
    path = save_checkpoint(tmp_path / "new.safetensors", hi)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    config = json.loads(meta["config"])
    del config["decoder"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={**meta, "config": json.dumps(config)})
    model, info = load_checkpoint(old, expected_kind="mae")
    assert "decoder" not in info.config and model.config.decoder == "hiend"
    assert model.config == hi.config
    sa, sb = hi.state_dict(), model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_saved_with_the_old_decoder_name_loads_as_plain(tmp_path: Path, mae):
    path = save_checkpoint(tmp_path / "plain.safetensors", mae)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    config = {**json.loads(meta["config"]), "decoder": "mae"}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={**meta, "config": json.dumps(config)})
    model, info = load_checkpoint(old, expected_kind="mae")
    assert info.config["decoder"] == "mae" and model.config == mae.config
    assert model.config.decoder == "plain" and isinstance(model.decoder, PlainMAEDecoder)
    sa, sb = mae.state_dict(), model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_layout_refuses_the_baseline(mae):
    with pytest.raises(InputError, match="decoder='plain'"):
        export_official_pretrained(mae)
    with torch.device("meta"):
        sd = export_official_pretrained(build("tiny"))
    with pytest.raises(InputError, match="decoder='mae'"):
        load_official_pretrained(sd, decoder="mae")


def test_from_mae_copies_the_encoder_exactly_as_for_hiend(tmp_path: Path, mae):
    unetr = UNETR.from_mae(mae, num_classes=3, feature_size=4)
    mine = unetr.encoder.state_dict()
    theirs = mae.encoder.state_dict()
    assert set(theirs) - set(mine) == {"cls_token"}
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert unetr.config.tap_blocks == (3, 6, 9) and unetr.config.layer_norm_eps == 1e-6
    # Same as a UNETR from a Hi-End-MAE with this encoder (same seed for the new layers) ...
    torch.manual_seed(0)
    hi = build("tiny", attn_backend="math")
    hi.encoder.load_state_dict(theirs)
    torch.manual_seed(5)
    a = UNETR.from_mae(mae, num_classes=3, feature_size=4)
    torch.manual_seed(5)
    b = UNETR.from_mae(hi, num_classes=3, feature_size=4)
    sa, sb = a.state_dict(), b.state_dict()
    assert a.config == b.config and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # ... and from the saved checkpoint.
    path = save_checkpoint(tmp_path / "plain.safetensors", mae)
    c = load_unetr_init(path, num_classes=3, feature_size=4)
    assert all(torch.equal(c.encoder.state_dict()[k], v) for k, v in mine.items())
    with torch.no_grad():
        assert c.eval()(torch.rand(1, 1, 48, 48, 48)).shape == (1, 3, 48, 48, 48)


# -- training --------------------------------------------------------------------------------------
def _phantom_crops(B: int = 2) -> torch.Tensor:
    """Smooth blobs on a soft background in [0, 1] (a few spheres of different intensity per crop) plus a
    faint texture of period 8 voxels along the last axis. Smooth blobs alone barely leave the plateau of
    predicting zero (loss 1 against the patch-normalised target) in 20 steps; the texture is structure
    the patch-normalised target exposes and the model can learn quickly."""
    g = torch.Generator().manual_seed(7)
    ax = torch.arange(48, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    crops = []
    for _ in range(B):
        vol = 0.2 + 0.05 * torch.sin(zz / 7) * torch.cos(xx / 9)
        for _ in range(4):
            c = torch.rand(3, generator=g) * 32 + 8
            r = float(torch.rand(1, generator=g)) * 8 + 5
            d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
            vol = vol + (0.3 + 0.5 * float(torch.rand(1, generator=g))) * torch.sigmoid(
                (r * r - d2) / (2 * r)
            )
        crops.append((vol + 0.05 * torch.sin(2 * math.pi * xx / 8)).clamp(0, 1))
    return torch.stack(crops)[:, None]


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build("tiny", decoder="plain", attn_backend="math").train()
    x = _phantom_crops()
    noise = torch.rand(2, 216, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))  # the paper's betas
    losses = []
    for _ in range(20):
        loss = model(x, noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # well below both the start and the loss of predicting zero (1.0)
    assert losses[-1] < 0.75 * losses[0] and losses[-1] < 0.8, losses
