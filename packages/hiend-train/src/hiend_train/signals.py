"""Preemption: stop at the next optimizer step with a checkpoint when the scheduler says so.

Cluster schedulers end jobs with a signal and a grace period: SLURM sends SIGTERM at preemption or the
time limit (then SIGKILL after ``KillWait``, 30 s by default), and ``--signal=USR1@90`` sends SIGUSR1
a chosen time before; Kubernetes sends SIGTERM and waits ``terminationGracePeriodSeconds``. Inside
:func:`stop_on_signals` (the ``hiend-train`` commands use it) the first SIGTERM or SIGUSR1 only marks
:data:`REQUEST`; the training loop sees the mark after the optimizer step in progress, saves a
checkpoint there (the same atomic save as ``stop_after_steps``) and returns with ``FitResult.signal``
set; the command then prints one line and exits with 128 + the signal's number (143 for SIGTERM), and
``--resume`` continues exactly. A second signal of the same kind has its default effect at once
(the handler is removed after the first).

Under DDP every rank must stop at the same step (a rank that stops alone leaves the others waiting in
the next all-reduce): each rank's mark travels in the step statistics it all-reduces anyway, and the
ranks read the agreed value where they synchronise already, every ``log_every`` optimizer steps and at
epoch ends, so the stop may come up to ``log_every`` steps later than in one process.

Schedulers signal the whole process group (SLURM's ``scancel``, Kubernetes, a terminal's Ctrl-C), so
the DataLoader workers get the signal too; torch's own handler would end them, and the run with them
(a traceback, no checkpoint). The workers therefore ignore these signals (:func:`worker_ignores_signals`,
the loaders' ``worker_init_fn``): the main process alone decides, and shuts its workers down as it
ends. A worker that dies all the same while a stop is requested (signalled before its
``worker_init_fn`` ran) is taken as the stop: the loop saves at the last optimizer step boundary
(:func:`worker_lost`; :func:`hiend_train.loop.train_one_epoch`).

Python-API users opt in the same way: ``with stop_on_signals(): run(cfg)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

    import torch

    from .dist import DistEnv

#: The signals that ask a run to stop with a checkpoint
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """The process's stop mark: the number of the first signal received inside :func:`stop_on_signals`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def request(self, signum: int) -> None:
        """Mark the stop (what the handler does; tests call it directly)."""
        if self.signum is None:
            self.signum = int(signum)

    def clear(self) -> None:
        self.signum = None


#: The mark the training loop reads
REQUEST = StopRequest()

#: What the workers ignore: the stop signals and Ctrl-C (the main process handles them)
WORKER_IGNORED: tuple[signal.Signals, ...] = (*SIGNALS, signal.SIGINT)


class StopVote:
    """Whether the run was asked to stop, agreed by every rank (see the module).

    One process: :data:`REQUEST`, at once. DDP: each rank's mark rides along the all-reduce of the
    step statistics (:meth:`all_sum`), and the ranks read the agreed vote only where they synchronise
    anyway (:meth:`asked` with ``synced``), so that all stop at the same step."""

    def __init__(self, env: DistEnv) -> None:
        self.env = env
        #: the ranks' marks so far, all-reduced, on the device (DDP only)
        self.votes: torch.Tensor | None = None

    def all_sum(self, stats: torch.Tensor) -> torch.Tensor:
        """``stats`` summed over the processes (:func:`hiend_train.dist.all_sum`), with this rank's
        stop mark summed alongside (DDP) and kept in :attr:`votes`."""
        import torch

        from .dist import all_sum

        if not self.env.distributed:
            return all_sum(self.env, stats)
        mark = torch.full((1,), float(REQUEST.requested), dtype=stats.dtype, device=stats.device)
        summed = all_sum(self.env, torch.cat([stats, mark]))
        self.votes = torch.maximum(self.votes, summed[-1]) if self.votes is not None else summed[-1]
        return summed[:-1]

    def asked(self, synced: bool) -> bool:
        """Did a signal ask the run to stop? One process: at once; DDP: only where the ranks sync
        anyway (``synced``: a host read of the votes costs nothing more there)."""
        if not self.env.distributed:
            return REQUEST.requested
        return synced and self.votes is not None and float(self.votes) > 0

    @staticmethod
    def signal_name() -> str:
        """The signal's name (a rank stopped by another rank's signal names the scheduler's usual one)."""
        return REQUEST.name or "SIGTERM"


def worker_ignores_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: this worker ignores SIGTERM, SIGUSR1 and SIGINT, so that a
    signal sent to the whole process group reaches only the main process's decision. (The worker still
    ends when the main process shuts it down or dies: torch's watchdog.)"""
    for s in WORKER_IGNORED:
        signal.signal(s, signal.SIG_IGN)


def worker_lost(exc: BaseException) -> bool:
    """Is ``exc`` torch's error for a DataLoader worker that died (killed, exited) while
    :data:`REQUEST` asks for a stop? Then the death is part of the stop, not a failure."""
    return REQUEST.requested and isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = SIGNALS) -> Iterator[StopRequest]:
    """While inside, the first of ``signals`` marks :data:`REQUEST` instead of ending the process (and
    puts back that signal's default disposition, so a second one ends it). The previous handlers are
    restored on exit. Outside the main thread (where Python cannot set handlers) nothing is installed."""
    REQUEST.clear()
    if threading.current_thread() is not threading.main_thread():
        yield REQUEST
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        REQUEST.request(signum)
        signal.signal(signum, signal.SIG_DFL)

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield REQUEST
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it as the handler in place would have.

    A checkpoint is written through Python callbacks (``torch.save`` to a Python file, safetensors):
    a KeyboardInterrupt raised inside one leaves torch's zip writer at an unexpected position, and its
    RuntimeError replaces the interrupt (a traceback and exit 1 instead of exit 130). The saves run
    inside this block, so a Ctrl-C lands between two whole files: the atomic save keeps the folder
    consistent either way, and the interrupt keeps its meaning. Outside the main thread, or where
    SIGINT is ignored, nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or previous is None:
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not caught:
        return
    if previous is signal.SIG_DFL:  # the default disposition ends the process: as if it came now
        os.kill(os.getpid(), signal.SIGINT)
    elif callable(previous):  # Python's default handler raises KeyboardInterrupt here
        previous(signal.SIGINT, None)
