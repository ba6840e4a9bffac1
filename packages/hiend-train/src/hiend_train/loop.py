"""The training loop shared by pre-training and fine-tuning, apart from their setup.

:func:`train_one_epoch` runs one pass over the loader, micro-batch by micro-batch: read the batch,
step (:func:`_micro_step`: autocast, loss, backward and, at an accumulation's end, the optimizer step
of :func:`hiend_train.precision.optimizer_step`), add to the running means
(:class:`hiend_train.progress.RunningMeans`, a ``step`` line every ``log_every`` optimizer steps),
then ask the :class:`~hiend_train.checkpointing.Checkpointer` whether to save or stop.
:func:`fit` runs the epochs around it: resume (from an epoch end or from a step inside an epoch),
validation hooks, best and epoch-end checkpoints, events.

Both report through an :class:`~hiend_train.events.EventSink` (default: the run folder's log.jsonl)
and draw one rich progress bar with the run's ETA (:mod:`hiend_train.progress`), switched off by
``progress = false`` where it is not wanted. A non-finite loss stops the run
(:class:`~hiend_train.progress.NonFiniteLoss`) where the means reach the host; a signal
(:mod:`hiend_train.signals`) stops it at the next optimizer step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import Progress, TaskID

from hiend_data.errors import InputError, markup

from .checkpointing import Checkpointer, ResumePoint, resume
from .config import TrainConfig
from .dist import DistEnv
from .events import EventSink
from .optim import lr_at, set_lr
from .precision import autocast, epoch_seed, optimizer_step, step_seed
from .progress import (
    NonFiniteLoss,
    RunEta,
    RunningMeans,
    Where,
    optimizer_steps_per_epoch,
    progress_bar,
    remaining,
    step_stats,
    summary,
)
from .rundir import RunDir
from .signals import StopVote, worker_lost
from .task import Batch, LossFn, Task, unwrap

__all__ = ["FitResult", "LossFn", "NonFiniteLoss", "Task", "Training", "fit", "train_one_epoch", "unwrap"]


@dataclass
class FitResult:
    """What a run did: epochs done, optimizer steps, the last epoch's log record, the best score;
    ``stopped``: ``stop_after_steps`` or a signal ended it (possibly inside an epoch; ``--resume``
    continues)."""

    epochs: int
    steps: int
    last: dict[str, Any]
    best: float | None
    history: list[dict[str, Any]]
    stopped: bool = False
    #: the signal that stopped the run with a checkpoint (``"SIGTERM"``, ``"SIGUSR1"``; :mod:`hiend_train.signals`)
    signal: str | None = None


@dataclass
class Training:
    """What every epoch of a run shares: the task, its optimizer and grad scaler (fp16; else None),
    the config, process, run folder and resolved precision; where events go (None: ``run.events``,
    log.jsonl), the progress bar (None: one that draws nothing) and the run's ETA; ``saver`` writes
    the checkpoints (None: nothing is saved, as in :mod:`hiend_train.parity`)."""

    task: Task
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    cfg: TrainConfig
    env: DistEnv
    run: RunDir
    precision: str
    events: EventSink | None = None
    progress: Progress = field(default_factory=lambda: progress_bar(False))
    eta: RunEta = field(default_factory=lambda: RunEta(0))
    saver: Checkpointer | None = None

    def __post_init__(self) -> None:
        if self.events is None:
            self.events = self.run.events

    @property
    def sink(self) -> EventSink:
        assert self.events is not None  # set in __post_init__
        return self.events


def _lr(cfg: TrainConfig, step: int, n_batches: int) -> float:
    """The learning rate of optimizer step ``step`` (:func:`~hiend_train.optim.lr_at`: warm-up, cosine)."""
    per_epoch = optimizer_steps_per_epoch(n_batches, cfg.grad_accum)
    return lr_at(step, cfg.lr, cfg.warmup_epochs * per_epoch, cfg.epochs * per_epoch, cfg.min_lr)


def _batches(task: Task, start: int) -> Iterator[tuple[int, Batch]]:
    """(micro-batch index in the epoch, batch) from micro-batch ``start`` on. With a sampler that can
    start part-way (:class:`hiend_train.data.EpochSampler`: ``set_start``) the first ``start``
    micro-batches are never loaded; with another one they are loaded and dropped (the same batches
    either way: crops depend only on (seed, epoch, case), not on what was drawn before)."""
    if start and hasattr(task.sampler, "set_start"):
        task.sampler.set_start(start * task.loader.batch_size)  # type: ignore[attr-defined]
        return enumerate(task.loader, start)
    return itertools.islice(enumerate(task.loader), start, None)


#: the index :func:`_fetched` gives (with an empty batch) for a worker lost during a requested stop
LOST = -1


def _fetched(task: Task, start: int, stoppable: bool = True) -> Iterator[tuple[int, Batch]]:
    """:func:`_batches`, where a DataLoader worker's death while a stop is requested
    (:func:`~hiend_train.signals.worker_lost`) ends the batches with ``(LOST, {})``: the caller
    stops there. Any other error, or that one when not ``stoppable`` (no checkpointer), propagates."""
    try:
        yield from _batches(task, start)
    except RuntimeError as exc:
        if not (stoppable and worker_lost(exc)):
            raise
        yield LOST, {}


def _micro_step(
    t: Training, batch: Batch, epoch: int, update: bool
) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | float], torch.Tensor | None]:
    """The loss of one micro-batch under autocast and its backward (inside DDP's ``no_sync`` before
    an accumulation's last micro-batch); with ``update`` also the optimizer step. Returns (loss,
    metrics, the gradient norm of the step or None)."""
    model, cfg = t.task.ddp_model, t.cfg
    sync = t.env.distributed and not update
    with model.no_sync() if sync else contextlib.nullcontext():  # type: ignore[operator]
        with autocast(t.precision, t.env.device):
            loss, metrics = t.task.loss_fn(model, batch)
        norm = optimizer_step(
            loss,
            t.optimizer,
            t.scaler,
            t.task.model.parameters(),
            grad_accum=cfg.grad_accum,
            update=update,
            clip_grad=cfg.clip_grad,
        )
    return loss, metrics, norm


def _log_step(t: Training, means: RunningMeans, where: Where, bar: TaskID) -> None:
    """The ``step`` event (the window's means: a host sync) and the bar's loss."""
    values = means.step_line(where)
    t.sink.emit("step", epoch=where.epoch + 1, step=where.step, lr=where.lr, **values)
    t.progress.update(bar, description=f"epoch {where.epoch + 1}/{t.cfg.epochs} loss {values['loss']:.4f}")


def train_one_epoch(
    t: Training, epoch: int, step: int, start: int = 0, resumed: Mapping[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One pass over ``t.task.loader``; returns (global optimizer step after it, epoch record).

    Learning rate per optimizer step from :func:`~hiend_train.optim.lr_at`; the torch seed of each
    optimizer step from :func:`~hiend_train.precision.step_seed`. Loss, metrics and the gradient
    norm (``grad_norm``: the total L2 norm of each optimizer step's gradients, unscaled, before
    clipping) are averaged over processes on the device and reach the host only at ``step`` events,
    at the end of the epoch and at saves: that is where a non-finite loss stops the run, on every
    rank at once, before anything is saved.

    Inside an epoch: ``start`` micro-batches of it are done already (a resumed run; see
    :func:`_batches`) and ``resumed`` holds the running sums saved with them, so the step and epoch
    lines equal an uninterrupted run's. ``t.saver`` decides after each optimizer step whether to
    save and whether to stop (``stop_after_steps``, a signal): the record is then ``{"event":
    "stop", "epoch", "batch", "step"}`` (``batch``: micro-batches of the epoch done; ``signal``
    where one asked).
    """
    cfg, env, task = t.cfg, t.env, t.task
    n_batches = len(task.loader)
    task.ddp_model.train()
    means = RunningMeans(resumed, env.device)
    vote = StopVote(env)
    lr = _lr(cfg, step, n_batches)
    bar = t.progress.add_task(
        f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches, completed=start, eta=t.eta.text()
    )
    boundary = (start, means.snapshot())  # the last optimizer step boundary: micro-batches done, sums
    for i, batch in _fetched(task, start, stoppable=t.saver is not None):
        if i == LOST:  # a worker died during a requested stop: stop at the last step boundary
            t.optimizer.zero_grad(set_to_none=True)  # an accumulation in progress is dropped
            means.restore(boundary[1])
            return step, _stop(t, means, Where(epoch, step, lr, t.run.root), boundary[0], bar, vote)
        if "error" in batch:  # a case a DataLoader worker could not crop (hiend_train.data.NamedCases)
            raise InputError(batch["error"])
        micro = i % cfg.grad_accum
        last_micro = micro == cfg.grad_accum - 1 or i == n_batches - 1
        if micro == 0:  # an optimizer step begins: its seed and learning rate
            torch.manual_seed(step_seed(cfg.seed, step, env.rank))
            lr = _lr(cfg, step, n_batches)
            set_lr(t.optimizer, lr)
        loss, metrics, norm = _micro_step(t, batch, epoch, update=last_micro)
        if norm is not None:
            step += 1
        # loss and metrics stay on the device (no host sync per step), averaged over processes
        means.names = means.names or ["loss", *metrics]
        stats = vote.all_sum(step_stats(loss, metrics))  # each rank's stop mark rides along
        stats /= env.world
        means.add(stats, norm, int(batch["image"].shape[0]) * env.world)
        where = Where(epoch, step, lr, t.run.root)
        if last_micro and step % cfg.log_every == 0:
            _log_step(t, means, where, bar)
        if last_micro:
            boundary = (i + 1, means.snapshot())
            if task.on_step is not None:  # the probe: before the checkpointer saves (its state goes in)
                task.on_step(epoch, i + 1, step)
        t.eta.advance()
        t.progress.update(bar, advance=1, eta=t.eta.text())
        if last_micro and t.saver is not None:
            epoch_end = i == n_batches - 1  # the epoch end saves (fit)
            preempted = not epoch_end and vote.asked(synced=step % cfg.log_every == 0)
            then = t.saver.after_step(step, epoch_end, preempted)
            if then.stop:
                means.means(means.epoch, where)  # on every rank: nothing non-finite is saved
            if then.save:
                t.saver.save(epoch, i + 1, step, running=means, periodic=then.periodic)
            if then.stop:
                t.progress.remove_task(bar)
                record = {"event": "stop", "epoch": epoch + 1, "batch": i + 1, "step": step}
                return step, {**record, "signal": vote.signal_name()} if preempted else record
    t.progress.remove_task(bar)
    record = means.epoch_record(Where(epoch, step, lr, t.run.root))
    if vote.asked(synced=True):  # the epoch end syncs every rank (the means above)
        record["signal"] = vote.signal_name()
    return step, record


def _stop(
    t: Training, means: RunningMeans, where: Where, done: int, bar: TaskID, vote: StopVote
) -> dict[str, Any]:
    """Stop at a step boundary (``done`` micro-batches of the epoch) for a requested stop: save
    there (the running sums checked first on every rank) and give the ``stop`` record."""
    means.means(means.epoch, where)  # nothing non-finite is saved
    if t.saver is not None:
        t.saver.save(where.epoch, done, where.step, running=means)
    t.progress.remove_task(bar)
    return {
        "event": "stop",
        "epoch": where.epoch + 1,
        "batch": done,
        "step": where.step,
        "signal": vote.signal_name(),
    }


def _resumed(
    task: Task,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    run: RunDir,
    events: EventSink,
) -> ResumePoint:
    """:func:`~hiend_train.checkpointing.resume`, with a warning for each newer checkpoint passed
    over and the ``resume`` event."""
    point, passed = resume(task, optimizer, scaler, run)
    for why in passed:
        events.emit(
            "warning",
            message=f"{why} (interrupted while saving): resuming from {point.checkpoint} + {point.state} "
            f"(epoch {point.epoch}, batch {point.batch}, step {point.step})",
        )
    events.emit("resume", epoch=point.epoch, batch=point.batch, step=point.step, checkpoint=point.checkpoint)
    return point


def _epoch_hooks(t: Training, epoch: int, record: dict[str, Any], signal: str | None) -> None:
    """The task's ``on_epoch_end`` (validation, previews) into ``record``; skipped, with a warning,
    when a signal asked to stop (the checkpoint comes first: the grace period is short)."""
    if t.task.on_epoch_end is None:
        return
    if signal is not None:
        t.sink.emit("warning", message=f"{signal}: epoch {epoch + 1}'s validation skipped to save in time")
    else:
        record.update(t.task.on_epoch_end(epoch))


def fit(
    task: Task,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: TrainConfig,
    env: DistEnv,
    run: RunDir,
    precision: str,
    resume: bool = False,
    events: EventSink | None = None,
) -> FitResult:
    """Train ``task`` for the epochs of ``cfg`` (with ``resume``: from the newest checkpoint, at an
    epoch end or between two steps inside an epoch); ``resume``, ``step``, ``epoch`` and ``stop``
    events go to ``events`` (default ``run.events``: log.jsonl)."""
    events = run.events if events is None else events
    point = _resumed(task, optimizer, scaler, run, events) if resume else ResumePoint()
    saver = Checkpointer(task, optimizer, scaler, cfg, env, run, point.best)
    end = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    eta = RunEta(remaining(cfg, point, end, len(task.loader)))
    history: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    step, epochs_done, stopped, signal = point.step, point.epoch, False, None
    if task.on_step is not None:  # step 0 of a fresh run (the random initialisation); nothing on resume
        task.on_step(point.epoch, point.batch, step)
    with progress_bar(cfg.progress and env.main) as progress:
        t = Training(task, optimizer, scaler, cfg, env, run, precision, events, progress, eta, saver)
        for epoch in range(point.epoch, end):
            if saver.steps_done(step):
                stopped = True
                break
            torch.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))
            for drawn in (task.sampler, task.dataset):
                if drawn is not None:
                    drawn.set_epoch(epoch)
            skip = point.batch if epoch == point.epoch else 0
            step, record = train_one_epoch(
                t, epoch, step, start=skip, resumed=point.running if skip else None
            )
            if record["event"] == "stop":
                events.emit(**record)
                stopped, signal = True, record.get("signal")
                break
            signal = record.pop("signal", None)
            _epoch_hooks(t, epoch, record, signal)
            done = epoch + 1
            score = record.pop("score", None)
            if score is not None and (saver.best is None or score > saver.best):
                saver.save_best(done, step, score)
            record["best_score"] = saver.best
            then = saver.after_epoch(done, end, step, signal)
            if then.save:
                saver.save(done, 0, step, periodic=then.periodic)
            events.emit(**record)
            history.append(record)
            last = record
            epochs_done = done
            progress.console.print(markup(summary(record)))  # rich markup: nothing in it is parsed
            if then.stop:
                events.emit("stop", epoch=done, batch=0, step=step, **({"signal": signal} if signal else {}))
                stopped = True
                break
    return FitResult(
        epochs=epochs_done,
        steps=step,
        last=last,
        best=saver.best,
        history=history,
        stopped=stopped,
        signal=signal,
    )
