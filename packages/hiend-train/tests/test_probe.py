"""The segmentation probe (hiend_train.probe, hiend_train.probing): the head recovers what the features
hold, Dice is pooled per organ, the probe separates encoders that differ, runs inside pre-training at
the right steps, keeps best_probe.safetensors and gives the same numbers across a resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hiend_train import finetune, pretrain
from hiend_train.checkpointing import saved_at
from hiend_train.probe import (
    ProbeSettings,
    _score,
    fit_head,
    load_probe_data,
    probe_layers,
    run_probe,
    token_targets,
)
from hiend_train.rundir import RunDir

from .conftest import TINY_MODEL


def test_the_head_recovers_voxel_labels_that_are_a_linear_function_of_the_token():
    # each token's 8 voxels hold one of 5 patterns of 3 classes; the features are a random linear
    # image (with noise-free rank) of the pattern's one-hot: a linear head must recover every voxel
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 3, (5, 8), generator=g)
    mix = torch.randn(5, 12, generator=g, dtype=torch.float64)
    which = torch.randint(0, 5, (400,), generator=g)
    feats = torch.nn.functional.one_hot(which, 5).double() @ mix
    head = fit_head(feats[:300], patterns[which[:300]], 3, ridge=1e-9)
    assert torch.equal(head.predict(feats[300:], chunk=7), patterns[which[300:]])


def test_dice_is_pooled_over_crops_per_organ_and_an_absent_organ_is_not_scored():
    names = {1: "liver", 2: "spleen", 3: "kidney"}
    ref = torch.tensor([[1, 1, 1, 0], [2, 2, 0, 0]])
    pred = torch.tensor([[1, 1, 0, 0], [2, 0, 0, 1]])
    score = _score(pred, ref, names)
    # liver: 2 shared, 3 predicted, 3 in the reference -> 4/6; spleen 2/3; kidney in neither
    assert score.dice == {"liver": pytest.approx(4 / 6), "spleen": pytest.approx(2 / 3), "kidney": None}
    assert score.mean == pytest.approx((4 / 6 + 2 / 3) / 2)


def test_token_targets_follow_the_patch_order_of_the_encoder():
    from hiend_model.vit import patchify

    labels = torch.arange(4 * 4 * 4).reshape(1, 4, 4, 4) % 7
    got = token_targets(labels, 2)
    assert got.shape == (1, 8, 8) and got.dtype == torch.int64
    assert torch.equal(got, patchify(labels[:, None].double(), 2).long())
    assert torch.equal(got[0, 0], labels[0, :2, :2, :2].reshape(-1))  # token 0: the first 2^3 corner


def test_probe_layers_are_the_hi_end_taps_then_the_last_output():
    assert probe_layers(12) == {"block_3": 3, "block_6": 6, "block_9": 9, "last": None}
    assert probe_layers(4, (0, 2)) == {"block_0": 0, "block_2": 2, "last": None}


def _mae(seed: int = 0):
    from hiend_model import HiEndMAE
    from hiend_model.config import resolve_config

    torch.manual_seed(seed)
    return HiEndMAE(resolve_config("tiny", **TINY_MODEL))


def test_the_probe_draws_no_random_number_and_leaves_the_encoder_as_it_was(phantom_cache):
    settings = ProbeSettings()
    data = load_probe_data(phantom_cache, (32, 32, 32), settings)
    assert len(set(data.fit_cases) | set(data.val_cases)) == 6  # 4 fitting + 2 held out, no overlap
    assert data.fit_images.shape == (16, 1, 32, 32, 32) and data.val_labels.shape == (8, 32, 32, 32)
    assert data.names[1] == "liver" and data.num_classes == 7
    encoder = _mae().encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    rng = torch.random.get_rng_state()
    a = run_probe(encoder, 8, data, settings, probe_layers(4))
    assert torch.equal(rng, torch.random.get_rng_state())
    assert encoder.training and all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    b = run_probe(
        encoder, 8, load_probe_data(phantom_cache, (32, 32, 32), settings), settings, probe_layers(4)
    )
    assert a.to_json() | {"seconds": 0} == b.to_json() | {"seconds": 0}  # same crops, same numbers
    assert a.layer in a.layers and a.mean == a.layers[a.layer].mean == max(s.mean for s in a.layers.values())


@pytest.mark.slow
def test_a_random_encoder_probes_clearly_lower_than_the_encoder_of_a_fine_tuned_unetr(tiny, tmp_path):
    """The known-good encoder: a UNETR fine-tuned on the same labels (the demo's recipe, 240 steps)."""
    from hiend_model.checkpoint import load_checkpoint

    cfg = tiny(
        "finetune",
        out=tmp_path / "ft",
        epochs=40,
        batch_size=1,
        num_samples=4,
        lr=5e-3,
        feature_size=8,
        log_every=60,
        class_weights="inverse_sqrt",
        sampler={"class_balanced": True, "flip_axes": [1, 2], "rot90_prob": 0},
    )
    finetune.run(cfg)
    unetr, _ = load_checkpoint(cfg.out / "last.safetensors")
    settings = ProbeSettings()
    data = load_probe_data(cfg.cache, (32, 32, 32), settings)
    tuned = run_probe(unetr.encoder, 8, data, settings, probe_layers(4))
    randoms = [run_probe(_mae(s).encoder, 8, data, settings, probe_layers(4)).mean for s in (0, 1, 2)]
    assert tuned.mean > max(randoms) + 0.03, (tuned.mean, randoms)


@pytest.mark.slow
def test_probes_run_at_step_zero_and_every_n_steps_and_match_across_a_resume(tiny, tmp_path):
    fields = dict(epochs=3, probe_every=2, save_every_steps=3)  # 3 steps an epoch: 9 steps
    straight = tiny("pretrain", out=tmp_path / "straight", probe=tiny("pretrain").cache, **fields)
    pretrain.run(straight)
    log = RunDir(straight.out).read_log()
    probes = [r for r in log if r["event"] == "probe"]
    assert [r["step"] for r in probes] == [0, 2, 4, 6, 8]
    best = max(probes, key=lambda r: r["mean"])
    assert probes[-1]["best"] == best["mean"] and probes[-1]["best_step"] == best["step"]
    run = RunDir(straight.out)
    assert (
        saved_at(run.best_probe)["step"] == best["step"] and saved_at(run.best_probe)["probe"] == best["mean"]
    )
    assert set(probes[0]["layers"]) == {"block_1", "block_2", "block_3", "last"}

    cut = tiny("pretrain", out=tmp_path / "cut", probe=straight.probe, stop_after_steps=5, **fields)
    pretrain.run(cut)
    pretrain.run(cut.model_copy(update={"stop_after_steps": None}), resume=True)
    resumed = [r for r in RunDir(cut.out).read_log() if r["event"] == "probe"]

    def numbers(records):
        return [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in records]

    assert numbers(resumed) == numbers(probes)  # step 4 before the cut, 6 and 8 after: none repeated
    a, b = load_file(str(run.best_probe)), load_file(str(RunDir(cut.out).best_probe))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_command_prints_the_table_and_writes_json_equal_to_the_api(phantom_cache, tmp_path):
    from typer.testing import CliRunner

    from hiend_model.checkpoint import save_checkpoint
    from hiend_model.official import export_official_pretrained
    from hiend_train.cli import app

    mae = _mae(3)
    save_checkpoint(tmp_path / "mae.safetensors", mae)
    torch.save(export_official_pretrained(mae, wrap=True), tmp_path / "paper.pth")
    runner = CliRunner()
    got = {}
    for name in ("mae.safetensors", "paper.pth"):
        out = tmp_path / f"{name}.json"
        heads = ["--num-heads", "4", "--decoder-num-heads", "4"] if name.endswith(".pth") else []
        args = ["probe", str(tmp_path / name), *heads, "--cache", str(phantom_cache), "--out", str(out)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "liver" in res.output and "block_3" in res.output and "mean" in res.output
        got[name] = json.loads(out.read_text())
    settings = ProbeSettings()
    api = run_probe(
        mae.encoder, 8, load_probe_data(phantom_cache, (32, 32, 32), settings), settings, probe_layers(4)
    )
    for record in got.values():  # the paper's layout of the same weights probes the same
        assert record["mean"] == pytest.approx(api.mean, abs=1e-12)
        assert record["dice"] == pytest.approx(api.dice, abs=1e-12)
    rand = runner.invoke(
        app, ["probe", "--random", "tiny", "--img-size", "32", "--cache", str(phantom_cache)]
    )
    assert rand.exit_code == 0, rand.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--img-size", "32"], "--img-size 32: only with --random"),
        ([], "give a checkpoint to probe"),
        (["--random", "nosuch"], "--random nosuch"),
    ],
)
def test_probe_settings_that_make_no_sense_are_one_line_exit_2(phantom_cache, tmp_path, args, message):
    from typer.testing import CliRunner

    from hiend_model.checkpoint import save_checkpoint
    from hiend_train.cli import app

    extra = []
    if args[:1] == ["--img-size"]:
        save_checkpoint(tmp_path / "mae.safetensors", _mae())
        extra = [str(tmp_path / "mae.safetensors")]
    res = CliRunner().invoke(app, ["probe", *extra, *args, "--cache", str(phantom_cache)])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1


def test_a_probe_cache_with_too_few_cases_is_refused_before_the_run_writes(tiny, tmp_path):
    from hiend_data.errors import InputError

    cfg = tiny("pretrain", out=tmp_path / "run", probe=tiny("pretrain").cache, probe_cases=5)
    with pytest.raises(InputError, match="the probe needs 7 labelled cases"):
        pretrain.run(cfg)
    assert not (tmp_path / "run" / "config.json").exists()


def test_runs_of_any_seed_are_probed_on_the_same_crops(tiny, tmp_path):
    from hiend_train.probing import probe_settings

    a = probe_settings(tiny("pretrain", seed=0, probe=tiny("pretrain").cache))
    b = probe_settings(tiny("pretrain", seed=3, probe=tiny("pretrain").cache))
    assert a == b == ProbeSettings(cases=4, val_cases=2, crops=4, seed=0)
