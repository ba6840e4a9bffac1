"""Long runs: checkpoints inside an epoch and exact mid-epoch resume, keep_last, save_every_minutes,
the gradient norm, TensorBoard, the run's ETA and torch.compile."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hiend_data.errors import InputError
from hiend_model.checkpoint import read_checkpoint_info
from hiend_train import loop, pretrain, runner
from hiend_train.cli import app
from hiend_train.data import EpochSampler
from hiend_train.events import TensorBoardSink
from hiend_train.rundir import RunDir

#: 6 phantom cases, one per micro-batch, no validation: 6 micro-batches an epoch; drop-path and the
#: masking noise draw from torch's generator at every step
FIELDS = dict(epochs=2, batch_size=1, num_samples=2, val_fraction=0.0, warmup_epochs=0.5)


def config(tiny, out, **fields):
    """A tiny pre-training config of :data:`FIELDS` with drop-path on (``fields`` override)."""
    model = {**tiny("pretrain").model, "drop_path": 0.1}
    return tiny("pretrain", out=out, **{"model": model, **FIELDS, **fields})


def assert_bit_identical(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def records(run: RunDir, event: str) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("time", "crops_per_s", "seconds")}
        for r in run.read_log()
        if r["event"] == event
    ]


@pytest.mark.parametrize(
    ("grad_accum", "workers", "stop_at"),
    [(1, 0, 8), (2, 1, 2)],  # step 8: micro-batch 2 of epoch 2; step 2: micro-batch 4 of epoch 1
)
def test_resume_inside_an_epoch_gives_the_uninterrupted_weights(tiny, tmp_path, grad_accum, workers, stop_at):
    fields = dict(grad_accum=grad_accum, workers=workers)
    straight = pretrain.run(config(tiny, tmp_path / "straight", **fields))
    first = pretrain.run(config(tiny, tmp_path / "split", stop_after_steps=stop_at, **fields))
    assert first.fit.stopped and first.fit.steps == stop_at
    run = RunDir(tmp_path / "split")
    state = torch.load(run.state_path, weights_only=True)
    per_epoch = 6 // grad_accum
    assert (state["epoch"], state["batch"], state["step"]) == (
        stop_at // per_epoch,
        stop_at % per_epoch * grad_accum,
        stop_at,
    )
    assert state["batch"] > 0  # inside an epoch
    assert read_checkpoint_info(run.last).extra["hiend_train"]["batch"] == state["batch"]
    # the rest through the command line, which reads RUN/config.json (and drops stop_after_steps)
    res = CliRunner().invoke(app, ["pretrain", "--out", str(run.root), "--resume", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["steps"] == straight.fit.steps == 2 * per_epoch
    assert_bit_identical(run.last, RunDir(straight.out).last)
    sa = torch.load(RunDir(straight.out).state_path, weights_only=True)
    sb = torch.load(run.state_path, weights_only=True)
    for k, va in sa["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sb["optimizer"]["state"][k][name], va[name]), (k, name)
    # the log says the same: every step line (loss, lr, grad_norm) and the epoch means, exactly
    ref = RunDir(straight.out)
    assert records(run, "step") == records(ref, "step")
    assert records(run, "epoch") == records(ref, "epoch")
    stop = records(run, "stop")
    assert stop == [
        {"event": "stop", "epoch": stop_at // per_epoch + 1, "batch": state["batch"], "step": stop_at}
    ]
    resume = records(run, "resume")
    assert resume == [
        {
            "event": "resume",
            "epoch": state["epoch"],
            "batch": state["batch"],
            "step": stop_at,
            "checkpoint": "last.safetensors",
        }
    ]


def test_epoch_sampler_starts_part_way_through_the_same_order():
    data = list(range(10))
    full, part = (
        EpochSampler(data, num_replicas=2, rank=1, seed=3),
        EpochSampler(data, num_replicas=2, rank=1, seed=3),
    )
    full.set_epoch(4)
    part.set_epoch(4)
    part.set_start(2)
    assert list(part) == list(full)[2:] and len(part) == len(full) == 5
    part.set_epoch(5)  # a new epoch starts at its beginning
    full.set_epoch(5)
    assert list(part) == list(full)
    with pytest.raises(ValueError, match="start=6"):
        part.set_start(6)


def test_periodic_checkpoints_keep_the_newest_and_resume_falls_back_to_a_consistent_one(tiny, tmp_path):
    cfg = config(tiny, tmp_path / "run", save_every_steps=2, keep_last=2, epochs=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    # steps 2 and 4 inside the epoch, 6 at its end: the newest 2 are kept, both files of each
    assert [s for s, _, _ in run.periodic()] == [4, 6]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "step_00000004.pt",
        "step_00000004.safetensors",
        "step_00000006.pt",
        "step_00000006.safetensors",
    ]
    step6 = run.checkpoints / "step_00000006.safetensors"
    assert step6.read_bytes() == run.last.read_bytes()
    if hasattr(os, "link"):  # a hard link where the filesystem has them: no second copy written
        assert os.stat(step6).st_ino == os.stat(run.last).st_ino
    assert torch.load(run.checkpoints / "step_00000004.pt", weights_only=True)["batch"] == 4
    # later saves replace last.safetensors by a new file: the older copies keep their own weights
    assert (
        read_checkpoint_info(run.checkpoints / "step_00000004.safetensors").extra["hiend_train"]["step"] == 4
    )
    # a run stopped between writing last.safetensors and state.pt: the two disagree, the newest
    # periodic checkpoint whose files agree is used, with a warning
    shutil.copyfile(run.checkpoints / "step_00000004.pt", run.state_path)
    (run.checkpoints / "step_00000006.pt").unlink()
    more = cfg.model_copy(update={"epochs": 2})  # epochs is not a runtime field: refused ...
    with pytest.raises(InputError, match=r"epochs changed"):
        pretrain.run(more, resume=True)
    resumed = pretrain.run(cfg, resume=True)
    assert resumed.fit.steps == 6 and resumed.fit.history[-1]["epoch"] == 1
    log = run.read_log()
    warning = next(r for r in log if r["event"] == "warning")
    assert (
        "last.safetensors (epoch 1, batch 0, step 6) and state.pt (epoch 0, batch 4, step 4) disagree"
        in warning["message"]
    )
    assert (
        next(r for r in log if r["event"] == "resume")["checkpoint"]
        == "checkpoints/step_00000004.safetensors"
    )
    # nothing consistent at all: one line naming what disagrees
    shutil.copyfile(run.checkpoints / "step_00000004.pt", run.state_path)
    for _, _, state in run.periodic():
        state.unlink()
    with pytest.raises(InputError, match=r"no checkpoint to resume from \(last.safetensors .* disagree\)"):
        pretrain.run(cfg, resume=True)


def test_save_every_minutes_saves_by_wall_time(tiny, tmp_path, monkeypatch):
    """40 simulated seconds per optimizer step, a save every minute: after steps 2, 4 and 6."""
    started = [0]
    set_lr = loop.set_lr

    def counting_set_lr(optimizer, lr):  # called once at the start of every optimizer step
        started[0] += 1
        return set_lr(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", counting_set_lr)
    monkeypatch.setattr(loop, "clock", lambda: 40.0 * started[0])
    cfg = config(tiny, tmp_path / "run", save_every_minutes=1.0, keep_last=5, epochs=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert [s for s, _, _ in run.periodic()] == [2, 4, 6]
    assert [torch.load(p, weights_only=True)["batch"] for _, _, p in run.periodic()] == [2, 4, 0]


def test_keep_last_zero_keeps_no_step_copies(tiny, tmp_path):
    cfg = config(tiny, tmp_path / "run", save_every_steps=1, keep_last=0, epochs=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert run.periodic() == [] and run.last.is_file()
    assert torch.load(run.state_path, weights_only=True)["step"] == 6


def test_long_run_flags_reach_the_config_and_bad_values_are_one_line(tmp_path, phantom_cache):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["pretrain", "--cache", str(phantom_cache), "--out", str(out), "--save-every-minutes", "0"]
    )
    assert res.exit_code == 2 and "save_every_minutes" in res.output and not out.exists()
    res = CliRunner().invoke(
        app, ["pretrain", "--cache", str(phantom_cache), "--out", str(out), "--set", "keep_last=-1"]
    )
    assert res.exit_code == 2 and "keep_last" in res.output and not out.exists()


def test_grad_norm_is_logged_and_is_the_norm_before_clipping(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", clip_grad=1e-3, epochs=1)
    pretrain.run(cfg)
    log = RunDir(cfg.out).read_log()
    steps = [r for r in log if r["event"] == "step"]
    assert all(np.isfinite(r["grad_norm"]) and r["grad_norm"] > 1e-3 for r in steps)  # clipped to 1e-3 after
    epoch = next(r for r in log if r["event"] == "epoch")
    assert epoch["grad_norm"] == pytest.approx(np.mean([r["grad_norm"] for r in steps]), rel=1e-9)


def test_grad_norm_matches_clip_grad_norm():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net(torch.randn(5, 4)).square().sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    assert torch.allclose(loop.grad_norm(net.parameters()), expected)
    assert float(loop.grad_norm(torch.nn.Linear(2, 2).parameters())) == 0.0


def test_tensorboard_scalars_equal_log_jsonl(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny(
        "pretrain",
        out=tmp_path / "run",
        epochs=2,
        tensorboard=True,
        val_fraction=0.2,
        val_every=1,
        preview_every=2,
    )
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert any(p.name.startswith("events.out.tfevents") for p in run.tb.iterdir())
    acc = EventAccumulator(str(run.tb), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    log = run.read_log()
    steps = [r for r in log if r["event"] == "step"]
    assert steps
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm")):
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == {r["step"]: float(np.float32(r[key])) for r in steps}, tag
    assert {e.step for e in acc.Scalars("train/crops_per_s")} == {r["step"] for r in steps}
    epochs = [r for r in log if r["event"] == "epoch"]
    val = {e.step: e.value for e in acc.Scalars("val/loss")}
    assert val == {r["step"]: float(np.float32(r["val_loss"])) for r in epochs}
    assert [e.step for e in acc.Scalars("epoch/loss")] == [r["step"] for r in epochs]
    images = acc.Images("preview")
    preview = next(r for r in log if r["event"] == "preview")
    assert [i.step for i in images] == [preview["step"]] == [epochs[-1]["step"]]
    assert images[0].width > 0 and images[0].height > 0


def test_tensorboard_after_a_resume_from_an_earlier_step_shows_each_step_once(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tiny, tmp_path / "run", epochs=1, tensorboard=True, save_every_steps=2)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    # back to step 2 (as after a crash past it), then resume: steps 3..6 are written a second time
    shutil.copyfile(run.checkpoints / "step_00000002.safetensors", run.last)
    shutil.copyfile(run.checkpoints / "step_00000002.pt", run.state_path)
    pretrain.run(cfg, resume=True)
    assert len(list(run.tb.glob("events.out.tfevents*"))) == 2
    acc = EventAccumulator(str(run.tb), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # purged, not doubled
    steps = [r for r in run.read_log() if r["event"] == "step"]
    last = {r["step"]: r["loss"] for r in steps}  # the resumed run's lines come last
    assert {e.step: e.value for e in acc.Scalars("train/loss")} == {
        k: float(np.float32(v)) for k, v in last.items()
    }


def test_tensorboard_missing_is_one_line_of_bad_input(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(InputError, match=r"pip install 'hiend-train\[tensorboard\]'"):
        TensorBoardSink(tmp_path / "tb")
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1, tensorboard=True)
    with pytest.raises(InputError, match="tensorboard package is not installed"):
        pretrain.run(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_run_eta_counts_the_whole_run(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    eta = loop.RunEta(remaining=10)
    assert eta.text() == "run ETA -:--:--"
    now[0] += 8.0
    eta.advance()
    eta.advance()  # 4 s per micro-batch, 8 left
    assert eta.seconds() == pytest.approx(32.0) and eta.text() == "run ETA 0:00:32"
    assert loop.format_duration(3 * 3600 + 5 * 60 + 7) == "3:05:07"
    assert loop.format_duration(50 * 3600) == "50:00:00"
    columns = [getattr(c, "text_format", "") for c in loop.progress_bar(False).columns]
    assert "{task.fields[eta]}" in columns


def test_eta_of_a_run_covers_its_epochs_and_stop():
    cfg = loop.TrainConfig(epochs=5, grad_accum=2)
    assert loop._remaining(cfg, loop.ResumePoint(), 5, 6) == 30
    assert loop._remaining(cfg, loop.ResumePoint(epoch=1, batch=2, step=4), 5, 6) == 22
    stopped = cfg.model_copy(update={"stop_after_steps": 7})
    assert loop._remaining(stopped, loop.ResumePoint(epoch=1, batch=2, step=4), 5, 6) == 6


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


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # torch.compile's import
def test_checkpoints_of_a_compiled_model_have_the_plain_keys(tiny, tmp_path):
    from hiend_model import build

    model = build("tiny", **tiny("pretrain").model)
    wrapped = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    task = loop.Task(
        kind="pretrain",
        model=wrapped,
        ddp_model=wrapped,
        loss_fn=None,
        loader=None,
        sampler=None,
        dataset=None,
        plan=None,
    )
    loop.save_weights(task, tmp_path / "w.safetensors", 1, 2)
    assert set(load_file(str(tmp_path / "w.safetensors"))) == set(model.state_dict())
    assert loop.unwrap(wrapped) is model and loop.unwrap(model) is model


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # torch.compile's import
def test_a_compiled_run_trains_and_saves_plain_keys(tiny, tmp_path):
    """A real torch.compile (Dynamo; the ``eager`` backend, so no C++ compiler is needed) of a tiny run."""
    compile_ = torch.compile
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner.torch, "compile", lambda m: compile_(m, backend="eager"))
        cfg = tiny("pretrain", out=tmp_path / "run", epochs=1, compile=True)
        result = pretrain.run(cfg)
    assert np.isfinite(result.fit.last["loss"])
    keys = set(load_file(str(RunDir(cfg.out).last)))
    assert keys == set(result.model.state_dict()) and not any("_orig_mod" in k for k in keys)
