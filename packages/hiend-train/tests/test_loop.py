"""The training loop (hiend_train.loop): a DataLoader worker lost while a stop is requested."""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file

from hiend_train import loop, pretrain
from hiend_train.rundir import RunDir
from hiend_train.signals import REQUEST


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
