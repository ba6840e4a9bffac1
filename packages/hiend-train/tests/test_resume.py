"""Resume: 2 epochs + --resume for 2 more gives the weights of 4 epochs straight; the run folder
refuses to be overwritten or resumed with a different config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hiend_data.errors import InputError
from hiend_train import finetune, pretrain
from hiend_train.cli import app
from hiend_train.rundir import RunDir


def assert_same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7, msg=k)


def test_pretrain_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    fields = dict(epochs=4, warmup_epochs=1.5, val_fraction=0.2, val_every=1, grad_accum=2, num_samples=2)
    straight = tiny("pretrain", out=tmp_path / "straight", **fields)
    pretrain.run(straight)
    first = tiny("pretrain", out=tmp_path / "split", stop_after=2, **fields)
    pretrain.run(first)
    run = RunDir(first.out)
    assert torch.load(run.state_path, weights_only=True)["epoch"] == 2
    # the rest through the command line, which reads RUN/config.json
    res = CliRunner().invoke(app, ["pretrain", "--out", str(first.out), "--resume", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["epochs"] == 4
    assert_same_weights(run.last, RunDir(straight.out).last)
    assert_same_weights(run.best, RunDir(straight.out).best)
    a = [r for r in RunDir(straight.out).read_log() if r["event"] == "epoch"]
    b = [r for r in run.read_log() if r["event"] == "epoch"]
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5)
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
    sa = torch.load(RunDir(straight.out).state_path, weights_only=True)
    sb = torch.load(run.state_path, weights_only=True)
    assert sa["step"] == sb["step"] == 4 * 2  # 5 cases, 2 per micro-batch: 3 micro-batches, 2 steps
    for k, va in sa["optimizer"]["state"].items():
        torch.testing.assert_close(
            sb["optimizer"]["state"][k]["exp_avg_sq"], va["exp_avg_sq"], rtol=1e-5, atol=1e-12
        )


@pytest.mark.slow
def test_finetune_resume_keeps_the_best_score(tiny, tmp_path):
    fields = dict(epochs=3, val_fraction=0.2, val_every=1, num_samples=2, batch_size=2)
    straight = finetune.run(tiny("finetune", out=tmp_path / "straight", **fields))
    finetune.run(tiny("finetune", out=tmp_path / "split", stop_after=1, **fields))
    resumed = finetune.run(tiny("finetune", out=tmp_path / "split", **fields), resume=True)
    assert resumed.fit.best == pytest.approx(straight.fit.best, rel=1e-6)
    assert_same_weights(tmp_path / "split" / "last.safetensors", tmp_path / "straight" / "last.safetensors")
    assert_same_weights(tmp_path / "split" / "best.safetensors", tmp_path / "straight" / "best.safetensors")


def test_out_folder_is_never_overwritten_silently(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1)
    pretrain.run(cfg)
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(InputError, match=r"already holds a run with a different config \(epochs differ\)"):
        pretrain.run(cfg.model_copy(update={"epochs": 2}))
    with pytest.raises(InputError, match="already holds a run with the same config; pass --resume"):
        pretrain.run(cfg)
    with pytest.raises(InputError, match=r"--resume with a different config \(lr changed\)"):
        pretrain.run(cfg.model_copy(update={"lr": 5e-4}), resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        pretrain.run(cfg.model_copy(update={"out": tmp_path / "empty"}), resume=True)
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before
    # runtime fields may change on resume: a finished run resumed with more workers does nothing
    again = pretrain.run(cfg.model_copy(update={"workers": 1}), resume=True)
    assert again.fit.history == [] and (tmp_path / "run" / "last.safetensors").read_bytes() == before
