"""Fine-tuning controls: few-shot and k-fold splits, layer-wise learning-rate decay, a frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hiend_data.errors import InputError
from hiend_train import finetune
from hiend_train.cli import app
from hiend_train.config import FinetuneConfig, make_config
from hiend_train.data import few_shot_split, split_cases
from hiend_train.optim import build_optimizer, decays, encoder_depth, layer_lr_scales, lr_at, set_lr
from hiend_train.rundir import RunDir

NAMES = [f"case_{i:02d}" for i in range(12)]


def names_of(idx, names=NAMES):
    return [names[i] for i in idx]


# -- splits ------------------------------------------------------------------------------------------


def test_few_shot_subsets_are_nested_and_keep_the_validation_cases():
    full_train, full_val = split_cases(NAMES, 0.25, seed=3)
    assert few_shot_split(NAMES, 0.25, 3) == (full_train, full_val)  # no train_cases: the plain split
    subsets = {}
    for n in (1, 2, 4, 9):
        train, val = few_shot_split(NAMES, 0.25, 3, train_cases=n)
        assert val == full_val  # the validation cases do not depend on N
        assert len(train) == n and set(train) <= set(full_train) and not set(train) & set(val)
        assert train == sorted(train)  # in the order of the names
        subsets[n] = set(names_of(train))
    assert subsets[1] < subsets[2] < subsets[4] < subsets[9] == set(names_of(full_train))
    # seeded: the same call gives the same cases, other seeds (mostly) others
    assert few_shot_split(NAMES, 0.25, 3, train_cases=2) == few_shot_split(NAMES, 0.25, 3, train_cases=2)
    others = {tuple(few_shot_split(NAMES, 0.25, s, train_cases=2)[0]) for s in range(6)}
    assert len(others) > 1
    # the subset follows the names, not their order
    rev = NAMES[::-1]
    train_rev, val_rev = few_shot_split(rev, 0.25, 3, train_cases=4)
    assert set(names_of(train_rev, rev)) == subsets[4]
    assert set(names_of(val_rev, rev)) == set(names_of(full_val))


def test_few_shot_without_validation_and_too_many_cases():
    train, val = few_shot_split(NAMES, 0.0, 0, train_cases=5)
    assert len(train) == 5 and val == []
    assert len(few_shot_split(NAMES, 0.25, 0, train_cases=9)[0]) == 9  # 12 - 3 held out
    with pytest.raises(
        InputError,
        match=r"train_cases=10: the training split has 9 cases \(12 in the cache, "
        r"3 held out",
    ):
        few_shot_split(NAMES, 0.25, 0, train_cases=10)
    with pytest.raises(InputError, match=r"train_cases=9: the training split has 8 cases .* by fold 0 of 3"):
        few_shot_split(NAMES, 0.0, 0, train_cases=9, fold=0, folds=3)


def test_k_folds_partition_the_cases():
    names = [f"c{i}" for i in range(11)]
    folds = 4
    vals = []
    for k in range(folds):
        train, val = few_shot_split(names, 0.0, 7, fold=k, folds=folds)
        assert not set(train) & set(val) and sorted(train + val) == list(range(11))
        assert len(val) in (2, 3)
        vals.append(set(val))
        # train_cases on top: a subset of this fold's training cases, the fold's validation unchanged
        sub, val_sub = few_shot_split(names, 0.0, 7, train_cases=3, fold=k, folds=folds)
        assert val_sub == val and len(sub) == 3 and set(sub) <= set(train)
    assert set().union(*vals) == set(range(11)) and sum(map(len, vals)) == 11  # each case in one val set
    # hiend-data's k-fold, by name
    from hiend_data.discovery import Case, kfold

    ref = kfold([Case(n, []) for n in names], k=folds, seed=7)
    assert [sorted(names[i] for i in v) for v in vals] == [[c.case_id for c in v] for _, v in ref]
    with pytest.raises(InputError, match=r"folds=12: needs 2 <= folds <= the number of cases \(11\)"):
        few_shot_split(names, 0.0, 0, fold=0, folds=12)
    with pytest.raises(InputError, match="fold=4: folds are numbered 0 to 3"):
        few_shot_split(names, 0.0, 0, fold=4, folds=4)
    with pytest.raises(InputError, match="k-fold needs both"):
        few_shot_split(names, 0.0, 0, fold=1)


def test_config_fields_of_the_controls():
    cfg = FinetuneConfig()
    assert (
        cfg.train_cases,
        cfg.fold,
        cfg.folds,
        cfg.layer_decay,
        cfg.encoder_lr_scale,
        cfg.freeze_encoder,
    ) == (None, None, None, None, 1.0, False)
    cfg = FinetuneConfig(fold=2, folds=5, train_cases=3)
    assert cfg.val_fraction == 0.0 and (cfg.fold, cfg.folds, cfg.train_cases) == (
        2,
        5,
        3,
    )  # the fold validates
    again = FinetuneConfig(**json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg  # config.json round trip (val_fraction 0 with a fold is consistent)
    assert make_config(FinetuneConfig, {"fold": 0, "folds": 2, "val_fraction": 0}).val_fraction == 0.0
    for fields, match in [
        (
            {"fold": 1, "folds": 5, "val_fraction": 0.2},
            r"fold=1 and val_fraction=0.2: with k-fold the fold is",
        ),
        ({"fold": 1}, r"fold=1, folds=None: k-fold needs both"),
        ({"fold": 5, "folds": 5}, r"fold=5: folds are numbered 0 to 4"),
        ({"folds": 1, "fold": 0}, r"folds: Input should be greater than or equal to 2"),
        ({"train_cases": 0}, r"train_cases: Input should be greater than or equal to 1"),
        ({"layer_decay": 0.0}, r"layer_decay: Input should be greater than 0"),
        ({"layer_decay": 1.1}, r"layer_decay: Input should be less than or equal to 1"),
        ({"encoder_lr_scale": 0}, r"encoder_lr_scale: Input should be greater than 0"),
        (
            {"freeze_encoder": True, "layer_decay": 0.75},
            r"freeze_encoder: the frozen encoder has no learning rate",
        ),
    ]:
        with pytest.raises(InputError, match=match):
            make_config(FinetuneConfig, fields, source="ft.toml")


# -- layer-wise learning-rate decay --------------------------------------------------------------------


def tiny_unetr(depth=4):
    from hiend_model import UNETR, build

    mae = build(
        "tiny",
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=depth,
        num_heads=4,
        decoder_embed_dim=24,
        decoder_num_heads=4,
    )
    return UNETR.from_mae(mae, num_classes=3, feature_size=4)


def expected_scale(name, decay, enc_scale, depth=4):
    """By hand: D = depth + 1; embeddings decay^D, block i decay^(D - (i + 1)), the final norm 1."""
    if name in ("encoder.pos_embed", "encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"):
        return enc_scale * decay ** (depth + 1)
    if name.startswith("encoder.blocks."):
        i = int(name.split(".")[2])
        return enc_scale * decay ** (depth - i)
    if name.startswith("encoder.norm."):
        return enc_scale
    assert not name.startswith("encoder."), name
    return 1.0


def test_encoder_depths():
    assert [
        encoder_depth(n, 12)
        for n in (
            "pos_embed",
            "patch_embed.proj.weight",
            "cls_token",
            "blocks.0.attn.qkv.weight",
            "blocks.11.mlp.fc2.bias",
            "norm.weight",
        )
    ] == [0, 0, 0, 1, 12, 13]


@pytest.mark.parametrize(("decay", "enc_scale"), [(0.5, 1.0), (0.75, 0.1), (None, 0.2), (1.0, 1.0)])
def test_every_group_gets_its_layer_rate(decay, enc_scale):
    model = tiny_unetr()
    scales = layer_lr_scales(model, decay, enc_scale)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), lr_scales=scales)
    base = lr_at(5, 1e-3, warmup_steps=10, total_steps=100)  # half-way through the warm-up
    assert base == pytest.approx(5e-4, rel=1e-12)
    set_lr(opt, base)
    d = 1.0 if decay is None else decay
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["lr"] == pytest.approx(base * expected_scale(name, d, enc_scale), rel=1e-12), name
            assert group["lr_scale"] == pytest.approx(expected_scale(name, d, enc_scale), rel=1e-12), name
            assert group["weight_decay"] == (0.05 if decays(name, p.ndim) else 0.0), (
                name
            )  # the decay split stays
    assert seen == set(names.values())
    by_name = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_name["encoder.pos_embed"] == pytest.approx(base * enc_scale * d**5, rel=1e-12)
    assert by_name["encoder.patch_embed.proj.weight"] == pytest.approx(base * enc_scale * d**5, rel=1e-12)
    assert by_name["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(base * enc_scale * d**4, rel=1e-12)
    assert by_name["encoder.blocks.3.norm1.bias"] == pytest.approx(base * enc_scale * d, rel=1e-12)
    assert by_name["encoder.norm.weight"] == pytest.approx(base * enc_scale, rel=1e-12)
    for name in ("out.weight", "out.bias", "decoder5.transp_conv.weight", "encoder1.conv1.weight"):
        assert by_name[name] == base  # decoder and head: the full rate
    # the initial rates before any set_lr: lr x scale
    fresh = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), lr_scales=scales)
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx(
        [1e-3 * g["lr_scale"] for g in fresh.param_groups]
    )


def test_without_scales_the_optimizer_is_the_recipes():
    model = tiny_unetr()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999))
    assert len(opt.param_groups) == 2 and all("lr_scale" not in g for g in opt.param_groups)
    set_lr(opt, 3.7e-4)
    assert [g["lr"] for g in opt.param_groups] == [3.7e-4, 3.7e-4]  # exactly, no multiplication
    with pytest.raises(ValueError, match="has no ViT encoder"):
        layer_lr_scales(torch.nn.Linear(2, 2), 0.5)


# -- runs ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_few_shot_layer_decay_run_logs_its_cases_and_resumes_exactly(tiny, tmp_path, phantom_cache):
    from hiend_data.cache import Cache

    fields = dict(
        epochs=2,
        train_cases=2,
        val_fraction=0.4,
        layer_decay=0.5,
        batch_size=1,
        num_samples=1,
        warmup_epochs=0.5,
    )
    straight = finetune.run(tiny("finetune", out=tmp_path / "straight", **fields))
    cache = Cache.open(phantom_cache)
    train, val = few_shot_split(cache.cases, 0.4, 0, train_cases=2)
    want_train, want_val = names_of(train, cache.cases), names_of(val, cache.cases)
    assert want_val == names_of(split_cases(cache.cases, 0.4, 0)[1], cache.cases) and len(want_val) == 2
    run = RunDir(straight.out)
    log = run.read_log()
    setup = next(r for r in log if r["event"] == "setup")
    assert setup["train_case_names"] == want_train and setup["val_case_names"] == want_val
    assert (setup["train_cases"], setup["val_cases"], setup["steps_per_epoch"]) == (2, 2, 2)
    assert sorted({g["lr_scale"] for g in setup["lr_groups"]}) == [0.5**k for k in range(5, -1, -1)]
    saved = json.loads(run.config_path.read_text())
    assert saved["split"] == {"train": want_train, "val": want_val}
    assert (saved["train_cases"], saved["layer_decay"], saved["encoder_lr_scale"]) == (2, 0.5, 1.0)
    split = json.loads(run.split_path.read_text())
    assert (split["train"], split["val"], split["train_cases"], split["seed"]) == (want_train, want_val, 2, 0)
    # every group's rate in the saved optimizer is the scheduled rate x its scale
    state = torch.load(run.state_path, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    full = next(g["lr"] for g in groups if g["lr_scale"] == 1.0)
    assert full == pytest.approx(lr_at(3, 1e-3, 1, 4), rel=1e-12)  # the last step's rate (4 steps, warm-up 1)
    for g in groups:
        assert g["lr"] == pytest.approx(full * g["lr_scale"], rel=1e-12)
    # stop after 1 epoch, then --resume from the command line (config.json carries the split)
    finetune.run(tiny("finetune", out=tmp_path / "split", stop_after=1, **fields))
    res = CliRunner().invoke(app, ["finetune", "--out", str(tmp_path / "split"), "--resume", "-q"])
    assert res.exit_code == 0, res.output
    resumed, ref = load_file(str(tmp_path / "split" / "last.safetensors")), load_file(str(run.last))
    assert resumed.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=1e-6, atol=1e-7, msg=k)
    # resuming on other cases is refused
    cfg = tiny("finetune", out=tmp_path / "split", **fields)
    with pytest.raises(InputError, match=r"--resume on other cases .* train differ"):
        RunDir(cfg.out).check(cfg, True, {"train": want_val, "val": want_val})
    with pytest.raises(InputError, match=r"--resume with a different config \(train_cases changed\)"):
        finetune.run(cfg.model_copy(update={"train_cases": 3}), resume=True)


@pytest.mark.slow
def test_frozen_encoder_stays_bit_identical_while_the_decoder_learns(tiny):
    cfg = tiny(
        "finetune", epochs=3, freeze_encoder=True, lr=3e-3, warmup_epochs=0.2, batch_size=1, num_samples=2
    )
    torch.manual_seed(cfg.seed)  # the run's initial weights: seeded the same way
    initial = finetune.build_model(cfg, 7).state_dict()
    result = finetune.run(cfg)
    trained = result.model.state_dict()
    encoder = [k for k in trained if k.startswith("encoder.")]
    assert len(encoder) == 1 + 2 + 4 * 12 + 2  # pos_embed, patch_embed, 4 blocks, norm
    for k in encoder:
        assert torch.equal(trained[k], initial[k]), k
    assert not any(p.requires_grad for p in result.model.encoder.parameters())
    moved = [k for k in trained if not k.startswith("encoder.") and not torch.equal(trained[k], initial[k])]
    assert {"out.weight", "decoder5.transp_conv.weight", "encoder1.conv1.weight"} <= set(moved)
    # the optimizer holds the decoder only
    run = RunDir(cfg.out)
    state = torch.load(run.state_path, weights_only=True)
    n_decoder = sum(1 for n, _ in result.model.named_parameters() if not n.startswith("encoder."))
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == n_decoder
    log = run.read_log()
    setup = next(r for r in log if r["event"] == "setup")
    enc_numel = sum(p.numel() for p in result.model.encoder.parameters())
    assert setup["trainable_parameters"] == setup["parameters"] - enc_numel
    epochs = [r["loss"] for r in log if r["event"] == "epoch"]
    assert len(epochs) == 3 and epochs[-1] < epochs[0], epochs


def test_class_weights_from_the_training_cases(phantom_cache, tiny) -> None:
    """inverse_sqrt: the voxel counts come from the cache's per-case class counts of the training cases
    only; equal to counting the label maps themselves. A list is checked against num_classes."""
    import numpy as np

    from hiend_data.cache import Cache
    from hiend_data.errors import InputError
    from hiend_train.finetune import class_weights_for, training_class_counts
    from hiend_train.losses import inverse_sqrt_weights

    cache = Cache.open(phantom_cache)
    idx = [0, 2, 3]
    counts = training_class_counts(cache, idx, 7)
    by_hand = sum(
        np.bincount(np.asarray(cache.case(cache.cases[i]).label).reshape(-1), minlength=7) for i in idx
    )
    assert counts == by_hand.tolist()
    cfg = tiny("finetune", class_weights="inverse_sqrt")
    w = class_weights_for(cfg, cache, idx, 7)
    assert w.tolist() == pytest.approx(inverse_sqrt_weights(by_hand.tolist()).tolist(), rel=1e-6)
    assert w[0] < 0.3 < 1.0 < w[3]  # background light, a kidney heavy
    assert class_weights_for(tiny("finetune"), cache, idx, 7) is None
    assert class_weights_for(tiny("finetune", class_weights=[1.0] * 7), cache, idx, 7).tolist() == [1.0] * 7
    with pytest.raises(InputError, match="7 finite weights"):
        class_weights_for(tiny("finetune", class_weights=[1.0, 2.0]), cache, idx, 7)


def test_class_weighted_run_logs_its_weights(tiny) -> None:
    import json

    from hiend_train.finetune import run

    cfg = tiny("finetune", class_weights="inverse_sqrt", epochs=1)
    run(cfg)
    setup = next(
        json.loads(line)
        for line in (cfg.out / "log.jsonl").read_text().splitlines()
        if json.loads(line).get("event") == "setup"
    )
    assert len(setup["class_weights"]) == 7 and sum(setup["class_weights"]) == pytest.approx(7.0, rel=1e-5)
