"""Pre-training runs: the loss falls, the run folder holds what the README says, previews."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

from hiend_model import build
from hiend_train import pretrain
from hiend_train.rundir import RunDir


def held_out_batch(cfg):
    """The validation case's fixed crops and masking noise, as the run's validation draws them."""
    from hiend_data.cache import Cache
    from hiend_data.sampling import SamplerConfig
    from hiend_data.torch import CropDataset
    from hiend_train.data import split_cases

    cache = Cache.open(cfg.cache)
    _, val = split_cases(cache.cases, cfg.val_fraction, cfg.seed)
    assert len(val) == 1
    scfg = SamplerConfig.pretrain(crop_size=(32, 32, 32), num_samples=cfg.num_samples, **cfg.sampler)
    return pretrain.fixed_batch(CropDataset(cache, scfg, seed=cfg.seed), val[0], cfg.seed, 64)


def test_pretraining_loss_falls_and_the_run_folder_is_complete(tiny):
    cfg = tiny(
        "pretrain",
        epochs=10,
        batch_size=2,
        num_samples=4,
        lr=2e-3,
        warmup_epochs=1,
        val_fraction=0.2,
        val_every=5,
        preview_every=5,
        sampler={"flip_prob": 0.0, "rot90_prob": 0.0},
    )
    result = pretrain.run(cfg)
    run = RunDir(cfg.out)
    log = run.read_log()
    steps = [r for r in log if r["event"] == "step"]
    assert len(steps) == result.fit.steps == 10 * 3  # 5 training cases, 2 per step -> 3 steps per epoch
    losses = [r["loss"] for r in steps]
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    # normalised-pixel MAE loss starts at ~1 (the patch mean); on CT-like phantoms (texture, noise) 30
    # steps take it ~5 % lower (0.99 -> 0.94, deterministic for the seed)
    assert last < 0.97 * first, losses
    assert all(r["crops_per_s"] > 0 for r in steps)
    assert steps[0]["lr"] == 0.0 and max(r["lr"] for r in steps) == pytest.approx(2e-3, rel=0.2)
    epochs = [r for r in log if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 11))
    assert "val_loss" in epochs[4] and "val_loss" in epochs[9] and "val_loss" not in epochs[5]
    # held-out crops with fixed masks: the trained model beats a fresh one, and the log says so exactly
    images, noise = held_out_batch(cfg)
    torch.manual_seed(123)
    fresh = build(cfg.preset, **cfg.model)
    with torch.no_grad():
        before = float(fresh(images, noise).loss)
        after = float(result.model.eval()(images, noise).loss)
    assert after < 0.95 * before, (before, after)
    assert epochs[9]["val_loss"] == pytest.approx(after, rel=1e-5)
    # the resolved config, every field included, and the case split it gave
    saved = json.loads(run.config_path.read_text())
    split = saved.pop("split")
    trained_on = saved.pop("trained_on")  # what --resume compares the cache against
    assert saved == cfg.model_dump(mode="json") and saved["betas"] == [0.9, 0.95]
    from hiend_data.cache import Cache
    from hiend_train.data import split_cases

    names = Cache.open(cfg.cache).cases
    assert trained_on["plan_digest"] == Cache.open(cfg.cache).plan.digest() and trained_on["cases"] == 6
    train, val = split_cases(names, cfg.val_fraction, cfg.seed)
    assert split == {"train": [names[i] for i in train], "val": [names[i] for i in val]} and len(val) == 1
    assert run.saved_config() == saved and run.saved_split() == split
    # checkpoints: hiend format with the cache's plan at the model's crop size; previews
    from hiend_model.checkpoint import load_checkpoint

    model, info = load_checkpoint(run.last, expected_kind="mae")
    assert info.plan.spacing == (4.0, 4.0, 4.0) and info.plan.crop_size == (32, 32, 32)
    assert info.extra["hiend_train"]["epoch"] == 10
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())
    best_info = load_checkpoint(run.best, expected_kind="mae")[1]
    assert best_info.extra["hiend_train"]["score"] == -min(r["val_loss"] for r in epochs if "val_loss" in r)
    assert sorted(p.name for p in run.previews.iterdir()) == ["epoch_0005.png", "epoch_0010.png"]
    assert run.previews.joinpath("epoch_0005.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_previews_are_skipped_with_one_note(tiny, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    cfg = tiny("pretrain", epochs=3, preview_every=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert not run.previews.exists()
    assert capsys.readouterr().err.count("matplotlib is not installed") == 1
    assert sum(r["event"] == "warning" for r in run.read_log()) == 1
    assert run.last.is_file() and run.state_path.is_file()  # everything else is written


@pytest.mark.parametrize("log_every", [1, 100])  # caught at a log line, or at the latest at the epoch's end
def test_non_finite_loss_stops_the_run_before_saving(tiny, log_every):
    from hiend_train.progress import NonFiniteLoss

    cfg = tiny("pretrain", epochs=2, lr=1e30, warmup_epochs=0, log_every=log_every)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at epoch 1 by step \d+"):
        pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert not run.last.exists() and not run.state_path.exists()


def test_gradient_accumulation_equals_the_larger_batch(tiny, tmp_path):
    big = pretrain.run(tiny("pretrain", out=tmp_path / "big", batch_size=2, grad_accum=1, epochs=2))
    acc = pretrain.run(tiny("pretrain", out=tmp_path / "acc", batch_size=1, grad_accum=2, epochs=2))
    assert big.fit.steps == acc.fit.steps == 2 * 3  # 6 cases: batches of 2 volumes, or 2 micro-batches of 1
    la = [r["loss"] for r in RunDir(tmp_path / "big").read_log() if r["event"] == "step"]
    lb = [r["loss"] for r in RunDir(tmp_path / "acc").read_log() if r["event"] == "step"]
    assert lb == pytest.approx(la, rel=1e-5)  # the same crops, masks and updates, step by step
    # (weights agree too, except where the gradient is zero in exact arithmetic, e.g. attention key
    # biases: there Adam turns float rounding into full-size steps)
    wa, wb = big.model.state_dict(), acc.model.state_dict()
    for k in ("decoder.head.weight", "encoder.blocks.0.mlp.fc1.weight", "encoder.patch_embed.proj.weight"):
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
