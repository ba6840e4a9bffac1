"""Checkpoints (hiend_train.checkpointing): the three-step save, a full disk, periodic checkpoints and keep_last, save_every_minutes, what --resume takes, the metadata of the weights."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hiend_data.atomic as atomic
from hiend_data.errors import InputError
from hiend_model.checkpoint import read_checkpoint_info
from hiend_train import checkpointing, loop, pretrain
from hiend_train.outputs import writing
from hiend_train.rundir import RunDir
from hiend_train.task import Task, unwrap


class Killed(BaseException):
    """Stands for the process dying where it is raised (nothing after it runs)."""


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


#: 6 phantom cases, one per micro-batch, no validation: 6 micro-batches an epoch; drop-path and the
#: masking noise draw from torch's generator at every step
FIELDS = dict(epochs=2, batch_size=1, num_samples=2, val_fraction=0.0, warmup_epochs=0.5)


def config(tiny, out, **fields):
    """A tiny pre-training config of :data:`FIELDS` with drop-path on (``fields`` override)."""
    model = {**tiny("pretrain").model, "drop_path": 0.1}
    return tiny("pretrain", out=out, **{"model": model, **FIELDS, **fields})


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one_and_leaves_no_file(tiny, tmp_path, monkeypatch):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=3, stop_after=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    before = {p.name: p.read_bytes() for p in run.root.iterdir() if p.name != "log.jsonl"}

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "_fsync_file", full)
    with pytest.raises(
        InputError, match=r"state_\d+\.pt: no space left on device: the checkpoint of epoch 2"
    ):
        pretrain.run(cfg.model_copy(update={"stop_after": None}), resume=True)
    assert {p.name: p.read_bytes() for p in run.root.iterdir() if p.name != "log.jsonl"} == before
    # the weights fail (after the state was staged): the staged state goes too
    monkeypatch.setattr(atomic, "_fsync_file", lambda path: None)
    real = checkpointing.save_weights

    def weights_full(task, path, *args, **kwargs):
        with writing(path):
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/.last.safetensors.tmp")

    monkeypatch.setattr(checkpointing, "save_weights", weights_full)
    with pytest.raises(InputError, match=rf"^{run.last}: no space left on device: .* the previous one"):
        pretrain.run(cfg.model_copy(update={"stop_after": None}), resume=True)
    assert {p.name: p.read_bytes() for p in run.root.iterdir() if p.name != "log.jsonl"} == before
    monkeypatch.setattr(checkpointing, "save_weights", real)


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
    monkeypatch.setattr(checkpointing, "clock", lambda: 40.0 * started[0])
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


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # torch.compile's import
def test_checkpoints_of_a_compiled_model_have_the_plain_keys(tiny, tmp_path):
    from hiend_model import build

    model = build("tiny", **tiny("pretrain").model)
    wrapped = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    task = Task(
        stage="pretrain",
        model=wrapped,
        ddp_model=wrapped,
        loss_fn=None,
        loader=None,
        sampler=None,
        dataset=None,
        plan=None,
    )
    checkpointing.save_weights(task, tmp_path / "w.safetensors", 1, 2)
    assert set(load_file(str(tmp_path / "w.safetensors"))) == set(model.state_dict())
    assert unwrap(wrapped) is model and unwrap(model) is model


@pytest.mark.parametrize(
    ("target", "epoch", "resumed_at"),
    [("last.safetensors", 2, 1), ("state.pt", 2, 2), ("state.pt", 1, 1)],
)
def test_a_save_killed_between_its_files_resumes_to_the_uninterrupted_weights(
    tiny, tmp_path, monkeypatch, target, epoch, resumed_at
):
    """The process dies as the save at the end of ``epoch`` is about to put ``target`` in place:
    --resume continues (from that save or the one before) to the weights of a run never interrupted."""
    fields = dict(epochs=3, warmup_epochs=0.5)
    straight = pretrain.run(tiny("pretrain", out=tmp_path / "straight", **fields))
    cfg = tiny("pretrain", out=tmp_path / "run", **fields)
    run = RunDir(cfg.out)
    real_replace = os.replace
    seen: list[str] = []

    def dying_replace(src, dst, *args, **kwargs):
        dst = Path(dst)
        if dst.parent == run.root and dst.name == target:
            seen.append(dst.name)
            if len(seen) == epoch:  # one save per epoch
                raise Killed(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(Killed):
        pretrain.run(cfg)
    monkeypatch.setattr(os, "replace", real_replace)
    resumed = pretrain.run(cfg, resume=True)
    assert resumed.fit.epochs == 3 and resumed.fit.steps == straight.fit.steps
    assert_bit_identical(run.last, RunDir(straight.out).last)
    state = torch.load(run.state_path, weights_only=True)
    assert (state["epoch"], state["step"]) == (3, straight.fit.steps)
    assert not run.staged_states()  # the next save cleaned up what the interrupted one left
    resume = next(r for r in run.read_log() if r["event"] == "resume")
    assert resume["epoch"] == resumed_at


def test_a_staged_state_alone_is_a_save_that_never_happened(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert sorted(p.name for p in run.root.iterdir()) == [
        "config.json", "last.safetensors", "log.jsonl", "split.json", "state.pt",
    ]  # fmt: skip
    # a staged state of a save killed before its weights: last.safetensors + state.pt still agree
    state = torch.load(run.state_path, weights_only=True)
    torch.save({**state, "step": 99}, run.staged_state_path(99))
    again = pretrain.run(cfg, resume=True)
    assert again.fit.history == [] and again.fit.steps == state["step"]  # finished: nothing to do


def test_weights_record_the_stage_and_older_checkpoints_saying_kind_are_read(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    saved = read_checkpoint_info(run.last).extra["hiend_train"]
    assert saved["stage"] == "pretrain" and "kind" not in saved
    assert checkpointing.last_saved(run) == {**saved, "batch": 0}
    old = {"hiend_train": {"kind": "finetune", "epoch": 3, "step": 9}, "labels": {"1": "spleen"}}
    assert checkpointing.train_metadata(old) == {"stage": "finetune", "epoch": 3, "step": 9}
    assert checkpointing.train_metadata({}) == {} and checkpointing.train_metadata(None) == {}


def test_the_save_or_stop_decisions(tiny, tmp_path):
    from hiend_train.dist import DistEnv

    cfg = tiny("pretrain", out=tmp_path / "run", save_every_steps=2, stop_after_steps=5, save_every=2)
    saver = checkpointing.Checkpointer(None, None, None, cfg, DistEnv(), RunDir(cfg.out, writer=False))
    D = checkpointing.Decision
    assert saver.after_step(1, epoch_end=False, preempted=False) == D()
    assert saver.after_step(2, epoch_end=False, preempted=False) == D(save=True, periodic=True)
    assert saver.after_step(3, epoch_end=False, preempted=True) == D(save=True, stop=True)
    assert saver.after_step(5, epoch_end=False, preempted=False) == D(save=True, stop=True)
    assert (
        saver.after_step(4, epoch_end=True, preempted=False) == D() and saver.pending
    )  # the epoch end saves
    assert saver.after_epoch(1, 3, 4, None) == D(save=True, periodic=True)
    saver.pending = False
    assert saver.after_epoch(1, 3, 4, "SIGTERM") == D(save=True, stop=True)
    assert saver.after_epoch(3, 3, 5, None) == D(save=True, stop=False)  # the run ends there anyway
