"""Stop requests (hiend_train.signals): a scheduler's signal stops at the next step with a checkpoint; DataLoader workers ignore the signals; the stop vote."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hiend_train import finetune, loop, pretrain
from hiend_train.rundir import RunDir
from hiend_train.signals import REQUEST, StopVote, worker_ignores_signals


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_workers_ignore_the_stop_signals_and_ctrl_c():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        worker_ignores_signals(0)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in previous)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.fixture
def request_after(monkeypatch):
    """``request_after(n)``: the stop mark is set while optimizer step ``n`` runs (as a SIGTERM
    arriving then would), counted by the loop's learning-rate lookups at each step's start."""
    import signal

    from hiend_train.signals import REQUEST

    monkeypatch.setattr(REQUEST, "signum", None)
    real = loop.lr_at
    calls = {"n": 0}

    def arm(n: int) -> None:
        def lr_at(step, *args, **kwargs):
            calls["n"] += 1
            if step + 1 == n and calls["n"] > 1:  # the first lookup is the epoch's set-up, not a step
                REQUEST.request(signal.SIGTERM)
            return real(step, *args, **kwargs)

        monkeypatch.setattr(loop, "lr_at", lr_at)

    return arm


@pytest.mark.parametrize("at", [2, 3])  # inside the first epoch (3 steps each), and at its end
def test_a_signal_stops_at_the_next_step_saved_and_resume_is_exact(tiny, tmp_path, request_after, at):

    fields = dict(epochs=3, warmup_epochs=0.5)
    straight = pretrain.run(tiny("pretrain", out=tmp_path / "straight", **fields))
    assert straight.fit.steps == 9  # 3 steps an epoch: step 3 is the first epoch's last
    cfg = tiny("pretrain", out=tmp_path / "run", **fields)
    request_after(at)
    stopped = pretrain.run(cfg)
    assert (stopped.fit.stopped, stopped.fit.signal, stopped.fit.steps) == (True, "SIGTERM", at)
    run = RunDir(cfg.out)
    state = torch.load(run.state_path, weights_only=True)
    assert state["step"] == at and (state["epoch"], state["batch"]) == ((1, 0) if at == 3 else (0, at))
    stop = [r for r in run.read_log() if r["event"] == "stop"]
    assert stop == [{**stop[0], "step": at, "signal": "SIGTERM"}]
    REQUEST.clear()
    resumed = pretrain.run(cfg, resume=True)
    assert resumed.fit.signal is None and resumed.fit.steps == straight.fit.steps
    assert_bit_identical(run.last, RunDir(straight.out).last)


def test_a_signal_at_an_epoch_end_skips_validation_and_says_so(tiny, tmp_path, request_after):
    cfg = tiny("finetune", out=tmp_path / "run", epochs=3, val_every=1, val_fraction=0.34)
    request_after(2)  # finetune: 4 training cases at batch 2 -> 2 steps an epoch
    result = finetune.run(cfg)
    assert (result.fit.signal, result.fit.steps, result.fit.epochs) == ("SIGTERM", 2, 1)
    log = RunDir(cfg.out).read_log()
    assert any(r["event"] == "warning" and "validation skipped" in r["message"] for r in log)
    assert not any("val_dice" in r for r in log if r["event"] == "epoch")


def test_one_process_stops_at_once_and_the_vote_passes_statistics_through(monkeypatch):
    from hiend_train.dist import DistEnv

    monkeypatch.setattr(REQUEST, "signum", None)
    vote = StopVote(DistEnv(device=torch.device("cpu")))
    stats = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(vote.all_sum(stats), stats) and vote.votes is None  # no mark to carry alone
    assert not vote.asked(synced=False)
    REQUEST.request(signal.SIGUSR1)
    assert vote.asked(synced=False) and vote.signal_name() == "SIGUSR1"
    REQUEST.clear()
    assert StopVote.signal_name() == "SIGTERM"  # a rank stopped by another rank's signal


def test_ctrl_c_inside_a_checkpoint_write_lands_after_the_whole_save(tiny, tmp_path, monkeypatch):
    """A Ctrl-C that arrives while state.pt is being written (the CI failure: torch's zip writer broke
    with "unexpected pos" and the run exited 1) is held until the save is whole, then interrupts."""
    import os

    from hiend_train import checkpointing
    from hiend_train.checkpointing import saved_at

    real = checkpointing._torch_save
    sent = {"n": 0}

    def torch_save(obj, path):
        if sent["n"] == 0:
            sent["n"] += 1
            os.kill(os.getpid(), signal.SIGINT)  # delivered at once to this (the main) thread
        real(obj, path)

    monkeypatch.setattr(checkpointing, "_torch_save", torch_save)
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=3, save_every_steps=2)
    previous = signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # Python's Ctrl-C, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain.run(cfg)
    finally:
        signal.signal(signal.SIGINT, previous)
    run = RunDir(cfg.out)
    state = torch.load(run.state_path, weights_only=True)
    assert state["step"] == 2 and saved_at(run.last)["step"] == 2  # the pair of the interrupted save
    assert not list(run.staged_states())


def test_deferred_ctrl_c_keeps_an_ignored_sigint_ignored():
    import os

    from hiend_train.signals import interrupts_deferred

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
