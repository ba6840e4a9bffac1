"""The setup both kinds of run share (hiend_train.runner): a folder whose run never saved, torch.compile."""

from __future__ import annotations

import json

import pytest

from hiend_data.errors import InputError
from hiend_train import finetune, pretrain, progress, runner
from hiend_train.rundir import RunDir


class Killed(BaseException):
    """Stands for the process dying where it is raised (nothing after it runs)."""


def test_compile_flag_is_recorded_and_wraps_the_model_the_loss_calls(tiny, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(model):  # torch.compile on the CPU takes minutes: record the call instead
        compiled.append(model)
        return model

    monkeypatch.setattr(runner.torch, "compile", fake_compile)
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1, compile=True)
    result = pretrain.run(cfg)
    assert compiled == [result.model]
    run = RunDir(cfg.out)
    assert json.loads(run.config_path.read_text())["compile"] is True
    assert next(r for r in run.read_log() if r["event"] == "setup")["compile"] is True
    assert pretrain.PretrainConfig().compile is False  # off by default
    # compile is a runtime field: a run may be resumed with it switched off
    assert "compile" not in cfg.identity()


def test_num_classes_below_the_largest_label_is_refused_before_anything_is_written(tiny, tmp_path):
    cfg = tiny("finetune", out=tmp_path / "ft", num_classes=3, epochs=1)
    with pytest.raises(
        InputError, match=r"num_classes=3: the cache .* has label 6 \(case '\w+'\); .* at least 7"
    ):
        finetune.run(cfg)
    assert not cfg.out.exists()


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again(tiny, tmp_path, monkeypatch):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1)

    def killed_after_setup(*args, **kwargs):
        raise Killed("right after setup")

    monkeypatch.setattr(runner, "fit", killed_after_setup)
    with pytest.raises(Killed):
        pretrain.run(cfg)
    monkeypatch.undo()
    run = RunDir(cfg.out)
    assert run.config_path.is_file() and [r["event"] for r in run.read_log()] == ["start", "setup"]
    with pytest.raises(
        InputError,
        match=r"nothing to resume \(the run there stopped before its first checkpoint; start it again without --resume\)",
    ):
        pretrain.run(cfg, resume=True)
    result = pretrain.run(cfg)  # a fresh start reuses the folder
    assert result.fit.epochs == 1 and run.last.is_file()
    assert [r["event"] for r in run.read_log()].count("start") == 1  # a fresh log


def test_a_run_that_diverged_before_saving_can_be_started_again_with_other_settings(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1, lr=1e30, warmup_epochs=0)
    with pytest.raises(progress.NonFiniteLoss):
        pretrain.run(cfg)
    (cfg.out / "previews").mkdir()  # what such a run may leave beside its config
    (cfg.out / "previews" / "epoch_0001.png").write_bytes(b"stale")
    result = pretrain.run(cfg.model_copy(update={"lr": 1e-3}))
    assert result.fit.epochs == 1 and not (cfg.out / "previews").exists()
    assert json.loads((cfg.out / "config.json").read_text())["lr"] == 1e-3
    # once a checkpoint exists the folder is a run again: never overwritten
    with pytest.raises(InputError, match="already holds a run"):
        pretrain.run(cfg.model_copy(update={"lr": 1e-3}))
