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

Python-API users opt in the same way: ``with stop_on_signals(): run(cfg)``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

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


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = SIGNALS) -> Iterator[StopRequest]:
    """While inside, the first of ``signals`` marks :data:`REQUEST` instead of ending the process (and
    puts back that signal's default disposition, so a second one ends it). The previous handlers are
    restored on exit. Outside the main thread (where Python cannot set handlers) nothing is installed."""
    REQUEST.clear()
    if threading.current_thread() is not threading.main_thread():
        yield REQUEST
        return

    def handler(signum: int, frame: Any) -> None:
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
