"""The paper's layouts: export -> import round trips, size inference, MONAI cross-check, bad files."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_model import (
    UNETR,
    MAEConfig,
    UNETRConfig,
    build,
    load_official_finetuned,
    load_official_pretrained,
)
from hiend_model.official import (
    export_official_finetuned,
    export_official_pretrained,
    infer_arch_from_state_dict,
)

MAE_CASES = {
    "p12-sincos": dict(
        img_size=24, patch_size=12, embed_dim=36, num_heads=3, decoder_embed_dim=24, decoder_num_heads=2
    ),
    "p16-learned": dict(
        img_size=32,
        patch_size=16,
        embed_dim=24,
        num_heads=4,
        decoder_embed_dim=18,
        decoder_num_heads=3,
        pos_embed="learned",
    ),
    "odd-heads": dict(
        img_size=(16, 16, 16),
        patch_size=8,
        embed_dim=60,
        num_heads=5,
        decoder_embed_dim=30,
        decoder_num_heads=5,
        in_chans=2,
        mlp_ratio=2.0,
    ),
}


def _mae(fields: dict):
    torch.manual_seed(0)
    model = build(MAEConfig(depth=4, tap_blocks=(1, 2, 3), **fields)).eval()
    with torch.no_grad():  # non-trivial values everywhere (biases and norms included)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("name", list(MAE_CASES))
def test_pretrained_round_trip_and_inference(name):
    mae = _mae(MAE_CASES[name])
    cfg = mae.config
    exported = export_official_pretrained(mae, wrap=True)
    assert all(k.startswith("module.") for k in exported["state_dict"])
    sd = export_official_pretrained(mae)
    assert sd["encoder.patch_embed.proj.weight"].shape == (
        cfg.embed_dim,
        cfg.in_chans,
        *(cfg.patch_size,) * 3,
    )
    arch = infer_arch_from_state_dict(
        sd, "pretrain", num_heads=cfg.num_heads, decoder_num_heads=cfg.decoder_num_heads
    )
    assert {
        k: arch[k]
        for k in (
            "embed_dim",
            "patch_size",
            "in_chans",
            "depth",
            "decoder_embed_dim",
            "mlp_ratio",
            "pos_embed",
            "qkv_bias",
        )
    } == {
        k: getattr(cfg, k)
        for k in (
            "embed_dim",
            "patch_size",
            "in_chans",
            "depth",
            "decoder_embed_dim",
            "mlp_ratio",
            "pos_embed",
            "qkv_bias",
        )
    }
    assert tuple(arch["img_size"]) == cfg.img_size
    back = load_official_pretrained(exported, **{**arch, "tap_blocks": cfg.tap_blocks})
    assert back.config == cfg
    x = torch.rand(2, cfg.in_chans, *cfg.img_size)
    noise = torch.rand(2, cfg.num_patches)
    with torch.no_grad():
        a, b = mae(x, noise), back(x, noise)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)


UNETR_CASES = {
    "p12": dict(img_size=24, patch_size=12, embed_dim=36, num_heads=3),
    "p16-odd-heads": dict(img_size=(32, 16, 32), patch_size=16, embed_dim=60, num_heads=5),
}


@pytest.mark.parametrize("name", list(UNETR_CASES))
def test_finetuned_round_trip_and_inference(name):
    torch.manual_seed(0)
    unetr = UNETR(
        UNETRConfig(depth=4, tap_blocks=(1, 2, 3), num_classes=3, feature_size=4, **UNETR_CASES[name])
    ).eval()
    cfg = unetr.config
    sd = export_official_finetuned(unetr)
    if cfg.patch_size == 12:
        assert "decoder2.conv3d.weight" in sd and "decoder2.transp_conv.conv.weight" not in sd
    assert sd["encoder1.layer.conv1.conv.weight"].shape == (4, 1, 3, 3, 3)
    cubic = len(set(cfg.img_size)) == 1
    arch = infer_arch_from_state_dict(
        export_official_finetuned(unetr, wrap=True)["state_dict"],
        "finetune",
        num_heads=cfg.num_heads,
        img_size=None if cubic else cfg.img_size,
    )
    assert tuple(arch["img_size"]) == cfg.img_size
    assert (
        arch["patch_size"],
        arch["embed_dim"],
        arch["feature_size"],
        arch["num_classes"],
        arch["depth"],
    ) == (cfg.patch_size, cfg.embed_dim, 4, 3, 4)
    back = load_official_finetuned(
        sd,
        num_heads=cfg.num_heads,
        img_size=cfg.img_size,
        depth=4,
        tap_blocks=(1, 2, 3),
        layer_norm_eps=cfg.layer_norm_eps,
    )
    x = torch.rand(1, 1, *cfg.img_size)
    with torch.no_grad():
        assert torch.equal(unetr(x), back(x))


def test_patch16_export_runs_identically_in_monai():
    """Independent check: MONAI's own UNETR (patch 16) loads our export and gives our logits."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    unetr = UNETR(
        UNETRConfig(
            img_size=32,
            patch_size=16,
            embed_dim=24,
            depth=12,
            num_heads=2,
            num_classes=3,
            feature_size=4,
            layer_norm_eps=1e-5,
        )
    ).eval()
    ref = monai_nets.UNETR(
        in_channels=1,
        out_channels=3,
        img_size=(32, 32, 32),
        feature_size=4,
        hidden_size=24,
        mlp_dim=96,
        num_heads=2,
        proj_type="perceptron",
        norm_name="instance",
        res_block=True,
        qkv_bias=True,
    ).eval()
    ref.load_state_dict(export_official_finetuned(unetr, norm_cross_attn=True), strict=True)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(unetr(x), ref(x), rtol=1e-4, atol=1e-5)


def test_file_wrapping_and_errors(tmp_path):
    mae = _mae(MAE_CASES["p16-learned"])
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 1, **export_official_pretrained(mae, wrap=True)}, path)
    back = load_official_pretrained(path, num_heads=4, decoder_num_heads=3, depth=4, tap_blocks=(1, 2, 3))
    assert torch.equal(back.encoder.pos_embed, mae.encoder.pos_embed)
    legacy = tmp_path / "legacy.pth"  # pre-1.6 serialisation (not memory-mappable)
    torch.save(export_official_pretrained(mae, wrap=True), legacy, _use_new_zipfile_serialization=False)
    back = load_official_pretrained(legacy, num_heads=4, decoder_num_heads=3, depth=4, tap_blocks=(1, 2, 3))
    assert torch.equal(back.decoder.head.weight, mae.decoder.head.weight)
    # no arch: the released ViT-L/12 is assumed and the revealed sizes are checked against it
    with pytest.raises(InputError, match=r"released ViT-L/12.*embed_dim 24 \(released 1536\)"):
        load_official_pretrained(path)
    # a wrong head count still loads (heads are not in the tensors); a wrong size names key and shapes
    with pytest.raises(
        InputError, match=r"encoder\.blocks\.0\.mlp\.fc1\.weight \(checkpoint \(96, 24\), model \(48, 24\)\)"
    ):
        load_official_pretrained(
            path, num_heads=4, decoder_num_heads=3, depth=4, tap_blocks=(1, 2, 3), mlp_ratio=2.0
        )
    with pytest.raises(InputError, match="fine-tuned UNETR"):
        load_official_pretrained(
            export_official_finetuned(UNETR.from_mae(mae, num_classes=2, feature_size=4))
        )
    with pytest.raises(InputError, match="pre-training checkpoint"):
        load_official_finetuned(path)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="trunc.pth"):
        load_official_pretrained(truncated)
    with pytest.raises(FileNotFoundError):
        load_official_pretrained(tmp_path / "missing.pth")
    sd = export_official_pretrained(mae)
    del sd["decoder.norm.bias"]
    with pytest.raises(InputError, match=r"1 missing key\(s\): decoder\.norm\.bias"):
        load_official_pretrained(sd, num_heads=4, decoder_num_heads=3, depth=4, tap_blocks=(1, 2, 3))


def test_finetuned_ignores_monai_norm_cross_attn():
    torch.manual_seed(0)
    unetr = UNETR(
        UNETRConfig(
            img_size=24,
            patch_size=12,
            embed_dim=36,
            depth=4,
            tap_blocks=(1, 2, 3),
            num_heads=3,
            num_classes=2,
            feature_size=4,
        )
    )
    sd = export_official_finetuned(unetr, norm_cross_attn=True)
    back = load_official_finetuned(sd, num_heads=3, depth=4, tap_blocks=(1, 2, 3))
    assert back.config.layer_norm_eps == 1e-5  # MONAI's eps kept by default
    assert torch.equal(back.encoder.blocks[3].attn.proj.weight, unetr.encoder.blocks[3].attn.proj.weight)


def _layout(md: str, heading: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the code block under ``heading`` of a layout file (``module.`` stripped)."""
    block = md.split(heading, 1)[1].split("```", 2)[1]
    out = {}
    for line in block.strip().splitlines():
        key, shape = line.split(" ", 1)
        out[key.removeprefix("module.")] = tuple(int(s) for s in shape.strip("[]").split(","))
    return out


def _expand_blocks(layout: dict, stacks: dict[str, int]) -> dict:
    """Blocks not listed repeat block 0's keys and shapes (the layout files' convention)."""
    out = dict(layout)
    for prefix, n in stacks.items():
        for key, shape in layout.items():
            if key.startswith(prefix + "0."):
                for i in range(1, n):
                    out[f"{prefix}{i}.{key[len(prefix) + 2 :]}"] = shape
    return out


@pytest.mark.parametrize(
    ("preset", "heading", "total_m"), [("vit-l12", "## ViT-L/12", 368.0), ("vit-b16", "## ViT-B/16", 101.9)]
)
def test_presets_export_exactly_the_published_layout(shared_reference, preset, heading, total_m):
    want = _expand_blocks(
        _layout((shared_reference / "official_checkpoint_layout.md").read_text(), heading),
        {"encoder.blocks.": 12, "decoder.blocks.": 2, "decoder.cross_attention_blocks.": 3},
    )
    with torch.device("meta"):  # sizes only: no memory, no time
        got = {k: tuple(v.shape) for k, v in export_official_pretrained(build(preset)).items()}
    assert got == want
    assert round(sum(torch.Size(s).numel() for s in got.values()) / 1e6, 1) == total_m


def test_released_unetr_exports_exactly_the_published_layout(shared_reference):
    md = (shared_reference / "official_finetune_layout.md").read_text()
    want = _expand_blocks(_layout(md, "361.3 M values"), {"vit.blocks.": 12})
    with torch.device("meta"):
        unetr = UNETR.from_mae(build("vit-l12"), num_classes=14, feature_size=32)
        got = {k: tuple(v.shape) for k, v in export_official_finetuned(unetr, norm_cross_attn=True).items()}
    assert got == want
    # size inference on the published layout gives the released fine-tuning architecture
    from hiend_model.official import RELEASED_FINETUNE

    arch = infer_arch_from_state_dict(export_official_finetuned(unetr), "finetune")
    assert arch["num_classes"] == 14
    assert {k: v for k, v in arch.items() if k != "num_classes"} == {
        k: RELEASED_FINETUNE[k] for k in arch if k != "num_classes"
    }
