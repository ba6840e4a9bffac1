"""Fine-tuning runs: Dice + CE falls, train Dice rises, validation picks best.safetensors."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_train import finetune, pretrain
from hiend_train.rundir import RunDir


@pytest.fixture(scope="module")
def cache6(phantom_cache, tmp_path_factory):
    """The phantoms at 6 mm: a 32^3 crop (192 mm) shows an organ with its neighbours, as in the demo."""
    from hiend_data import Plan
    from hiend_data.cache import preprocess_dataset

    out = tmp_path_factory.mktemp("ft6") / "cache6"
    plan = Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32))
    return preprocess_dataset(phantom_cache.parent / "raw", out, plan, workers=0, progress=False).root


@pytest.mark.slow
def test_finetuning_loss_falls_and_dice_rises(tiny, cache6):
    # the demo's recipe (class-balanced centres, class-weighted CE, no side-swapping augmentation)
    cfg = tiny(
        "finetune",
        cache=cache6,
        epochs=8,
        batch_size=1,
        num_samples=4,
        lr=5e-3,
        warmup_epochs=0.4,
        val_fraction=0.2,
        val_every=2,
        class_weights="inverse_sqrt",
        sampler={"class_balanced": True, "flip_axes": [1, 2], "rot90_prob": 0.0},
    )
    result = finetune.run(cfg)
    run = RunDir(cfg.out)
    log = run.read_log()
    steps = [r for r in log if r["event"] == "step"]
    assert len(steps) == 8 * 5  # 5 training cases, one per step
    loss = [r["loss"] for r in steps]
    dice = [r["dice"] for r in steps]
    assert sum(loss[-5:]) / 5 < 0.9 * sum(loss[:5]) / 5, loss
    # 6 organs: a 40-step model gets the big ones first, so mean class Dice starts low
    assert sum(dice[-10:]) / 10 > 2 * sum(dice[:5]) / 5, dice
    vals = [r for r in log if r["event"] == "epoch" and "val_dice" in r]
    assert [r["epoch"] for r in vals] == [2, 4, 6, 8]
    assert all(len(r["val_dice_per_class"]) == 6 for r in vals)
    from hiend_model.checkpoint import load_checkpoint

    best, info = load_checkpoint(run.best, expected_kind="unetr")
    assert info.extra["hiend_train"]["score"] == pytest.approx(max(r["val_dice"] for r in vals))
    assert best.config.num_classes == 7 and info.plan.crop_size == (32, 32, 32)
    assert result.fit.best == info.extra["hiend_train"]["score"]
    assert info.extra["augment"] == {
        "flip_axes": [1, 2]
    }  # the flips it trained with (its sampler), for --tta


def test_finetuning_starts_from_the_pretrained_encoder(tiny, tmp_path):
    pre = tiny("pretrain", epochs=1, out=tmp_path / "pre")
    pre_model = pretrain.run(pre).model
    cfg = tiny(
        "finetune",
        epochs=1,
        init=tmp_path / "pre" / "last.safetensors",
        lr=1e-12,
        warmup_epochs=0,
        out=tmp_path / "ft",
        model={},
    )
    model = finetune.run(cfg).model
    # lr ~ 0: the UNETR's encoder is still the pre-trained one (class token dropped)
    mae_blocks = pre_model.encoder.blocks.state_dict()
    for k, v in model.encoder.blocks.state_dict().items():
        torch.testing.assert_close(v, mae_blocks[k], rtol=0, atol=1e-9)
    torch.testing.assert_close(model.encoder.pos_embed, pre_model.encoder.pos_embed, rtol=0, atol=1e-9)
    with pytest.raises(InputError, match="model.depth: with init the model's sizes come from"):
        finetune.run(cfg.model_copy(update={"model": {"depth": 2}, "out": tmp_path / "ft2"}))


def test_unlabelled_cache_is_refused(tiny, tmp_path):
    from hiend_data import Plan
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset

    raw = make_phantom_dataset(tmp_path / "raw", cases=1, test_cases=1, seed=3)
    (raw / "labelsTr" / "phantom_000.nii.gz").unlink()
    (raw / "imagesTr" / "phantom_000_0000.nii.gz").rename(raw / "imagesTs" / "phantom_000_0000.nii.gz")
    cache = preprocess_dataset(
        raw / "imagesTs", tmp_path / "cache", Plan(spacing=(6.0, 6.0, 6.0)), workers=0, progress=False
    )
    with pytest.raises(InputError, match="has no label; fine-tuning needs a labelled cache"):
        finetune.run(tiny("finetune", cache=cache.root))
    assert not (tmp_path / "run_finetune").exists()
    # pre-training is what an unlabelled cache is for
    result = pretrain.run(tiny("pretrain", cache=cache.root, epochs=1, out=tmp_path / "pre"))
    from hiend_model.checkpoint import read_checkpoint_info

    assert read_checkpoint_info(tmp_path / "pre" / "last.safetensors").plan.spacing == (6.0, 6.0, 6.0)
    assert result.fit.steps == 1 and 0.5 < result.fit.last["loss"] < 2.0


@pytest.mark.slow
def test_finetuning_from_the_papers_pretraining_file(tiny, tmp_path, shared_reference):
    from hiend_model.official import load_official_pretrained

    ref = torch.load(shared_reference / "hiend_mae_parity_tiny.pt", weights_only=True)
    pth = tmp_path / "hi_end_mae.pth"  # as released: wrapped, with DDP's module. prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref["state_dict"].items()}}, pth)
    heads = {"num_heads": 4, "decoder_num_heads": 4}
    cfg = tiny(
        "finetune", init=pth, model=heads, epochs=1, batch_size=3, num_samples=1, lr=1e-12, warmup_epochs=0
    )
    model = finetune.run(cfg).model
    mae = load_official_pretrained(pth, **heads)
    assert model.config.img_size == (48, 48, 48) and model.config.embed_dim == 96
    for k, v in mae.encoder.blocks.state_dict().items():
        torch.testing.assert_close(model.encoder.blocks.state_dict()[k], v, rtol=0, atol=1e-9)


def _phantom_names() -> dict[int, str]:
    from hiend_data.phantom import LABELS

    return {value: name for name, value in LABELS.items() if value}


def test_checkpoints_carry_the_datasets_label_names(tiny, tmp_path, phantom_cache):
    import json

    from hiend_data.cache import Cache
    from hiend_model.checkpoint import checkpoint_summary, read_checkpoint_info

    names = _phantom_names()
    assert Cache.open(phantom_cache).label_names == names  # preprocess read the phantoms' dataset.json
    cfg = tiny("finetune", epochs=1, batch_size=3, num_samples=1, warmup_epochs=0)
    finetune.run(cfg)
    last = RunDir(cfg.out).root / "last.safetensors"
    info = read_checkpoint_info(last, expected_kind="unetr")
    assert info.label_names == names and info.config["num_classes"] == 7
    assert info.extra["labels"] == {
        "1": "liver",
        "2": "spleen",
        "3": "kidney_right",
        "4": "kidney_left",
        "5": "spine",
        "6": "lungs",
    }
    assert checkpoint_summary(last)["labels"] == info.extra["labels"]
    # a dataset.json given in the config replaces the cache's names (v1 form; label 6 left unnamed)
    djson = tmp_path / "dataset.json"
    djson.write_text(json.dumps({"labels": {"0": "background", "1": "Liver", "5": "Spine"}}))
    cfg2 = cfg.model_copy(update={"labels": djson, "out": tmp_path / "ft2"})
    finetune.run(cfg2)
    assert read_checkpoint_info(tmp_path / "ft2" / "last.safetensors").label_names == {1: "Liver", 5: "Spine"}


def test_label_names_beyond_num_classes_are_refused(tiny, tmp_path, phantom_cache):
    import json
    import re
    import types

    names = _phantom_names()
    cfg = tiny("finetune")
    cache = types.SimpleNamespace(root=phantom_cache, label_names=names)
    assert finetune.run_label_names(cfg, cache, 7) == names
    with pytest.raises(InputError) as err:
        finetune.run_label_names(cfg, cache, 6)
    msg = str(err.value)
    assert (
        msg.startswith(f"{phantom_cache / 'labels.json'}: names label 6 ('lungs')") and "num_classes=6" in msg
    )
    assert finetune.run_label_names(cfg, types.SimpleNamespace(root=tmp_path, label_names=None), 7) is None
    djson = tmp_path / "dataset.json"
    djson.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 9}}))
    cfg = tiny("finetune", labels=djson)
    refused = rf"^{re.escape(str(djson))}: names label 9 \('tumour'\) but the model has num_classes=7"
    with pytest.raises(InputError, match=refused):
        finetune.run(cfg)
    assert not cfg.out.exists()  # refused before the run folder is written
    djson.write_text(json.dumps({"labels": {"background": 0, "both": [1, 2]}}))
    with pytest.raises(InputError, match=f"^{re.escape(str(djson))}: label 'both' is a region"):
        finetune.run(cfg)
