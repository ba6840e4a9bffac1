"""Runs and processes (issue 18): the run folder's lock, a DataLoader worker lost during a requested
stop, a full disk at a checkpoint, output places checked at startup, NaN and infinity in configs."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hiend_data.atomic as atomic
from hiend_data.errors import InputError
from hiend_model.config import MAEConfig, resolve_config
from hiend_train import loop, pretrain
from hiend_train.cli import _resolve
from hiend_train.config import PretrainConfig
from hiend_train.outputs import os_errno, writing
from hiend_train.rundir import RunDir, RunLock
from hiend_train.signals import REQUEST, worker_ignores_signals

# -- the run folder's lock -----------------------------------------------------------------------


def test_a_held_folder_is_refused_naming_the_holder_and_release_leaves_nothing(tmp_path):
    root = tmp_path / "a" / "run"
    with RunLock(root):
        assert (root / ".lock").read_text() == f"pid {os.getpid()}\n"
        with pytest.raises(
            InputError,
            match=rf"^{root}: another hiend-train run \(pid {os.getpid()}, this process\) is using",
        ):
            RunLock(root).acquire()  # (the POSIX lock alone would let its own process in)
    assert not (tmp_path / "a").exists()  # the folders it made, empty: removed
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    with RunLock(root):
        pass
    assert sorted(p.name for p in root.iterdir()) == ["config.json"]


def test_a_lock_is_not_kept_by_forked_children_of_a_holder_that_died(tmp_path):
    """The holder forks (a DataLoader worker) and dies with kill -9; the child lives on: the folder
    is free at once."""
    root = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from hiend_train.rundir import RunLock
        RunLock({str(root)!r}).acquire()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()
    try:
        assert Path(f"/proc/{child}").exists()  # still alive, with the lock file open
        lock = RunLock(root).acquire()
        assert (root / ".lock").read_text().startswith("pid ")
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_workers_ignore_the_stop_signals_and_ctrl_c():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        worker_ignores_signals(0)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in previous)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# -- a worker lost while a stop is requested -----------------------------------------------------


@pytest.mark.parametrize(("lost_at", "saved_batch"), [(1, 0), (2, 2)])  # mid-accumulation / at a boundary
def test_a_worker_lost_during_a_stop_saves_at_the_last_step_boundary(
    tiny, tmp_path, monkeypatch, lost_at, saved_batch
):
    """grad_accum 2, 3 micro-batches an epoch: the worker dies when micro-batch ``lost_at`` of the
    second epoch is fetched, right after a SIGTERM. The run saves at the last optimizer step boundary
    (an unfinished accumulation is dropped) and ``--resume`` ends on the uninterrupted weights."""
    fields = dict(epochs=2, grad_accum=2, warmup_epochs=0.5)
    straight = pretrain.run(tiny("pretrain", out=tmp_path / "straight", **fields))
    real = loop._batches

    def dying(task, start):
        for i, batch in real(task, start):
            if task.dataset.epoch == 1 and i == lost_at:
                REQUEST.request(signal.SIGTERM)
                raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")
            yield i, batch

    monkeypatch.setattr(REQUEST, "signum", None)
    monkeypatch.setattr(loop, "_batches", dying)
    cfg = tiny("pretrain", out=tmp_path / "run", **fields)
    stopped = pretrain.run(cfg)
    steps = 2 + saved_batch // 2  # 2 steps an epoch (3 micro-batches)
    assert (stopped.fit.signal, stopped.fit.steps) == ("SIGTERM", steps)
    run = RunDir(cfg.out)
    state = torch.load(run.state_path, weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (1, saved_batch, steps)
    monkeypatch.setattr(loop, "_batches", real)
    REQUEST.clear()
    resumed = pretrain.run(cfg, resume=True)
    assert resumed.fit.steps == straight.fit.steps
    a, b = load_file(str(run.last)), load_file(str(RunDir(straight.out).last))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_worker_lost_without_a_stop_request_is_an_error(tiny, tmp_path, monkeypatch):
    def dying(task, start):
        raise RuntimeError("DataLoader worker (pid 4242) exited unexpectedly")
        yield

    monkeypatch.setattr(REQUEST, "signum", None)
    monkeypatch.setattr(loop, "_batches", dying)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        pretrain.run(tiny("pretrain", out=tmp_path / "run", epochs=1))


# -- a full disk ---------------------------------------------------------------------------------


def test_writing_names_the_file_whatever_the_library_raised(tmp_path):
    target = tmp_path / "x.pt"
    with pytest.raises(OSError) as info, writing(target):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("basic_ios::clear: iostream error") from None  # torch.save's way
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert os_errno(ValueError("Error while serializing: I/O error: ... (os error 30)")) == errno.EROFS
    with pytest.raises(RuntimeError, match="a bug"), writing(target):
        raise RuntimeError("a bug")  # not about the place: unchanged
    assert os_errno(OSError(errno.ENOENT, "gone")) is None


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
    real = loop.save_weights

    def weights_full(task, path, *args, **kwargs):
        with writing(path):
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/.last.safetensors.tmp")

    monkeypatch.setattr(loop, "save_weights", weights_full)
    with pytest.raises(InputError, match=rf"^{run.last}: no space left on device: .* the previous one"):
        pretrain.run(cfg.model_copy(update={"stop_after": None}), resume=True)
    assert {p.name: p.read_bytes() for p in run.root.iterdir() if p.name != "log.jsonl"} == before
    monkeypatch.setattr(loop, "save_weights", real)


# -- output places -------------------------------------------------------------------------------


def test_every_output_place_is_checked_before_the_run_writes(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", tensorboard=True)
    cfg.out.mkdir()
    (cfg.out / "tb").write_text("not a folder")
    with pytest.raises(InputError, match=r"/tb: exists and is not a folder"):
        pretrain.run(cfg)
    assert sorted(p.name for p in cfg.out.iterdir()) == ["tb"]
    RunDir(cfg.out).check_outputs(cfg.model_copy(update={"tensorboard": False}))  # not written: fine
    (cfg.out / "tb").unlink()
    (cfg.out / "state.pt").mkdir()
    with pytest.raises(InputError, match=r"/state.pt: exists and is not a file"):
        RunDir(cfg.out).check_outputs(cfg)


# -- NaN and infinity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "sets", "message"),
    [
        ({"lr": float("inf")}, [], "^command line: lr: inf is not a finite number$"),
        ({}, ["warmup_epochs=Infinity"], "warmup_epochs: inf is not"),
        ({}, ["clip_grad=NaN"], "clip_grad: nan is not"),
        ({}, ["save_every_minutes=inf"], "save_every_minutes: inf is not"),  # text, parsed by pydantic
        ({}, ["model.mask_ratio=nan"], "model.mask_ratio: nan is not"),
        ({}, ["sampler.pad_value=-Infinity"], "sampler.pad_value: -inf is not"),
    ],
)
def test_a_non_finite_value_is_refused_naming_field_and_value(flags, sets, message):
    with pytest.raises(InputError, match=message):
        _resolve("pretrain", None, flags, sets, resume=False)


def test_a_non_finite_value_shadowed_by_a_later_layer_is_refused_too(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text("lr = inf\n")
    with pytest.raises(InputError, match=rf"^{path}: lr: inf is not a finite number$"):
        _resolve("pretrain", path, {"lr": 1e-3}, [], resume=False)
    with pytest.raises(ValueError, match="finite"):
        PretrainConfig(betas=(0.9, float("nan")))


def test_model_configs_refuse_non_finite_numbers():
    with pytest.raises(InputError, match="^invalid MAEConfig: mlp_ratio: inf is not a finite number$"):
        resolve_config("tiny", mlp_ratio=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        MAEConfig(layer_norm_eps="nan")
