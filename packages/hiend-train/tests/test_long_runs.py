"""Long runs: exact mid-epoch resume, the epoch sampler, long-run flags, the gradient norm in the log,
TensorBoard and a compiled run. (Periodic checkpoints and keep_last: test_checkpointing.py; the
ETA: test_progress.py.)"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hiend_data.errors import InputError
from hiend_model.checkpoint import read_checkpoint_info
from hiend_train import pretrain, runner
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
        probe=tiny("pretrain").cache,
        probe_every=2,
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
    probes = [r for r in log if r["event"] == "probe"]
    assert [r["step"] for r in probes] == [0, 2, 4, 6]  # 6 steps (3 an epoch)
    assert {e.step: e.value for e in acc.Scalars("probe/mean")} == {
        r["step"]: float(np.float32(r["mean"])) for r in probes
    }
    liver = {e.step: e.value for e in acc.Scalars("probe/dice/liver")}
    assert liver == {r["step"]: float(np.float32(r["dice"]["liver"])) for r in probes}
    last = {e.step: e.value for e in acc.Scalars("probe/last/mean")}
    assert last == {r["step"]: float(np.float32(r["layers"]["last"]["mean"])) for r in probes}


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
