"""The training loop shared by pre-training and fine-tuning, apart from their setup.

:func:`train_one_epoch` runs one pass over the loader (autocast, gradient accumulation, DDP no_sync,
per-iteration learning rate, per-step seeding, the gradient norm, a non-finite loss stops the run,
periodic checkpoints between optimizer steps); :func:`fit` runs the epochs around it: resume (from an
epoch end or from a step inside an epoch), validation hooks, checkpoints and training state
(:class:`Checkpointer`), events. Both report through an :class:`~hiend_train.events.EventSink`
(default: the run folder's log.jsonl) and draw one rich progress bar with the run's ETA, switched off
by ``disable=`` where it is not wanted.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hiend_data.errors import USER_ERRNOS, InputError, markup

from .config import TrainConfig
from .data import nonfinite_message
from .dist import DistEnv, all_sum
from .events import EventSink
from .optim import lr_at, set_lr
from .outputs import writing
from .rundir import RunDir, rng_state, set_rng_state
from .signals import REQUEST, worker_lost

#: the clock of ``save_every_minutes`` (seconds; a module attribute, so that tests can replace it)
clock: Callable[[], float] = time.monotonic

#: loss_fn(model, batch) -> (scalar loss, {metric: scalar tensor or float}); ``model`` is the
#: (DDP-wrapped) network; metrics are averaged like the loss (keep them tensors: no host sync)
LossFn = Callable[[Any, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops (its last checkpoint stays as it was)."""


@dataclass
class Task:
    """What pre-training or fine-tuning hands to :func:`fit`.

    model: the unwrapped network (on its device); ddp_model: what the loss calls (DDP wrapper or the
    model); loader / sampler: the training DataLoader and its DistributedSampler; dataset: the
    CropDataset (``set_epoch``); plan: saved in every checkpoint; on_epoch_end(epoch) -> metrics to log
    (validation, previews), with ``"score"`` (higher is better) to keep ``best.safetensors``; lr_scales:
    per-parameter learning-rate multipliers for :func:`~hiend_train.optim.build_optimizer` (None: all 1);
    cache: the :class:`hiend_data.cache.Cache` the crops come from (named in errors about its data).
    """

    kind: str
    model: Any
    ddp_model: Any
    loss_fn: LossFn
    loader: Any
    sampler: Any
    dataset: Any
    plan: Any
    on_epoch_end: Callable[[int], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    lr_scales: dict[str, float] | None = None
    cache: Any = None


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA (``fp16`` where the GPU lacks bf16), ``fp32`` on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision fp16 needs CUDA (on the CPU use fp32 or bf16)")
    return precision


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of (run seed, epoch, rank), set at every epoch start (before anything else of
    the epoch draws; each optimizer step then sets its own, :func:`step_seed`)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed set before optimizer step ``step`` (steps done so far in the run) on ``rank``:
    the masking noise and drop-path of a step depend on nothing else, so a run resumed from any step
    boundary, inside an epoch too, draws exactly what an uninterrupted one would, whatever was drawn
    before (and no rank's generator state needs saving)."""
    return int(np.random.SeedSequence([seed, step, rank, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def nonfinite_cases(images: torch.Tensor, names: Sequence[str]) -> list[str]:
    """The names of the crops of ``images`` ``[N, ...]`` that hold NaN or infinite values (each name
    once, in order; ``names[i]`` names crop i, as in a batch of :func:`hiend_data.torch.collate_crops`)."""
    if images.numel() == 0 or not images.is_floating_point():
        return []
    bad = (~torch.isfinite(images.detach().reshape(images.shape[0], -1)).all(dim=1)).nonzero().flatten()
    return list(dict.fromkeys(names[i] if i < len(names) else f"crop {i}" for i in bad.tolist()))


@contextlib.contextmanager
def naming_bad_cases(images: torch.Tensor, names: Sequence[str], cache: Any, where: str) -> Iterator[None]:
    """Around a model call on crops ``images`` of the cases ``names``: the model's InputError about
    non-finite images ("images contain NaN or infinite values", which names no file) becomes one line
    naming the cache, the case(s) and their image file (:func:`hiend_train.data.nonfinite_message`).
    Nothing is checked until the model has refused the batch (the model checks every batch anyway)."""
    try:
        yield
    except InputError:
        bad = nonfinite_cases(images, names)
        if not bad:
            raise
        raise InputError(nonfinite_message(None if cache is None else cache.root, bad, where)) from None


def unwrap(model: Any) -> Any:
    """The module under a ``torch.compile`` wrapper (``_orig_mod``), else ``model``: what checkpoints
    save and load, so that their keys carry no ``_orig_mod.`` prefix."""
    return getattr(model, "_orig_mod", model)


def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the parameters' gradients, as ``clip_grad_norm_`` computes it: a 0-d
    tensor on their device (no host synchronisation); 0 when no parameter has a gradient."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total_norm is not None:
        return total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class _Meter:
    """Running sums on the device (read on the host only at log lines, epoch ends and saves):
    ``[loss, *metrics]`` (float64) over micro-batches, the total gradient norm over optimizer steps."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.n = 0
        self.grad: torch.Tensor | None = None
        self.n_grad = 0

    def add(self, stats: torch.Tensor) -> None:
        self.sums = stats.clone() if self.sums is None else self.sums + stats
        self.n += 1

    def add_grad(self, norm: torch.Tensor) -> None:
        norm = norm.detach().double().reshape(())
        self.grad = norm.clone() if self.grad is None else self.grad + norm
        self.n_grad += 1

    def state(self) -> dict[str, Any]:
        """The sums as plain numbers (a host synchronisation), for state.pt: exact (float64)."""
        return {
            "sums": None if self.sums is None else self.sums.tolist(),
            "n": self.n,
            "grad": None if self.grad is None else float(self.grad),
            "n_grad": self.n_grad,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: Any) -> _Meter:
        """What :meth:`state` returned, back on ``device`` (None or {}: empty)."""
        meter = cls()
        if state:
            if state.get("sums") is not None:
                meter.sums = torch.tensor(state["sums"], dtype=torch.float64, device=device)
            if state.get("grad") is not None:
                meter.grad = torch.tensor(state["grad"], dtype=torch.float64, device=device)
            meter.n, meter.n_grad = int(state.get("n", 0)), int(state.get("n_grad", 0))
        return meter


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (hours unbounded), or ``-:--:--`` when not known yet."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunEta:
    """Time left in the run: the wall time per micro-batch since this invocation started (validation,
    previews and checkpoints included) times the micro-batches still to do (``remaining`` at the
    start: every epoch left, up to ``stop_after`` / ``stop_after_steps`` where set)."""

    def __init__(self, remaining: int) -> None:
        self.remaining = max(int(remaining), 0)
        self.done = 0
        self.t0 = time.perf_counter()

    def advance(self) -> None:
        """One micro-batch done."""
        self.done += 1

    def seconds(self) -> float | None:
        """Seconds left (None before the first micro-batch)."""
        if self.done == 0:
            return None
        rate = (time.perf_counter() - self.t0) / self.done
        return rate * max(self.remaining - self.done, 0)

    def text(self) -> str:
        return f"run ETA {format_duration(self.seconds())}"


def optimizer_steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` micro-batches (the last step may take fewer)."""
    return max(1, math.ceil(n_batches / grad_accum))


def _batches(task: Task, start: int) -> Iterator[tuple[int, Any]]:
    """(micro-batch index in the epoch, batch) from micro-batch ``start`` on. With a sampler that can
    start part-way (:class:`hiend_train.data.EpochSampler`: ``set_start``) the first ``start``
    micro-batches are never loaded; with another one they are loaded and dropped (the same batches
    either way: crops depend only on (seed, epoch, case), not on what was drawn before)."""
    if start and hasattr(task.sampler, "set_start"):
        task.sampler.set_start(start * task.loader.batch_size)
        return enumerate(task.loader, start)
    return itertools.islice(enumerate(task.loader), start, None)


#: the index :func:`_fetched` gives (with ``None``) for a worker lost during a requested stop
LOST = -1


def _fetched(task: Task, start: int, stoppable: bool = True) -> Iterator[tuple[int, Any]]:
    """:func:`_batches`, where a DataLoader worker's death while a stop is requested
    (:func:`~hiend_train.signals.worker_lost`) ends the batches with ``(LOST, None)``: the caller
    stops there. Any other error, or that one when not ``stoppable`` (no checkpointer), propagates."""
    try:
        yield from _batches(task, start)
    except RuntimeError as exc:
        if not (stoppable and worker_lost(exc)):
            raise
        yield LOST, None


def train_one_epoch(
    task: Task,
    optimizer: Any,
    scaler: Any,
    cfg: TrainConfig,
    env: DistEnv,
    run: RunDir,
    epoch: int,
    step: int,
    precision: str,
    progress: Progress | None = None,
    events: EventSink | None = None,
    start: int = 0,
    resumed: dict[str, Any] | None = None,
    saver: Checkpointer | None = None,
    eta: RunEta | None = None,
) -> tuple[int, dict[str, Any]]:
    """One pass over ``task.loader``; returns (global optimizer step after it, epoch record).

    Learning rate per optimizer step from :func:`~hiend_train.optim.lr_at`; the torch seed of each
    optimizer step from :func:`step_seed`. Loss, metrics and the gradient norm (``grad_norm``: the
    total L2 norm of each optimizer step's gradients, unscaled, before clipping) are averaged over
    processes on the device and reach the host only at ``step`` events (every ``log_every`` optimizer
    steps, to ``events``; default ``run.events``, log.jsonl), at the end of the epoch and at saves:
    that is where a non-finite loss stops the run, on every rank at once, before anything is saved.
    ``progress``: the bar of :func:`progress_bar` (None: one that draws nothing); ``eta``: the run's.

    Inside an epoch: ``start`` micro-batches of it are done already (a resumed run; see
    :func:`_batches`) and ``resumed`` holds the running sums saved with them, so the step and epoch
    lines equal an uninterrupted run's. ``saver`` writes the periodic checkpoints between optimizer
    steps (one due after the epoch's last step is left to the epoch end: ``saver.pending``) and stops
    at ``cfg.stop_after_steps``: the record is then ``{"event": "stop", "epoch", "batch", "step"}``
    (``batch``: micro-batches of the epoch done).
    """
    events = run.events if events is None else events
    progress = progress_bar(False) if progress is None else progress
    eta = RunEta(0) if eta is None else eta
    n_batches = len(task.loader)
    per_epoch = optimizer_steps_per_epoch(n_batches, cfg.grad_accum)
    total_steps, warmup = cfg.epochs * per_epoch, cfg.warmup_epochs * per_epoch
    device = env.device
    model = task.ddp_model
    model.train()
    resumed = resumed or {}
    names: list[str] = list(resumed.get("names", []))
    so_far = _Meter.from_state(resumed.get("epoch"), device)  # the epoch so far
    window = _Meter.from_state(resumed.get("window"), device)  # since the previous step line
    crops = crops_window = 0  # in this pass, for crops/s
    votes = None  # DDP: ranks that asked to stop (hiend_train.signals), summed on the device

    def stopped_by() -> str:
        """The signal's name (a rank stopped by another rank's signal names the scheduler's usual one)."""
        return REQUEST.name or "SIGTERM"

    def stop_asked(synced: bool) -> bool:
        """Did a signal ask the run to stop? One process: at once; DDP: where the ranks sync anyway
        (``synced``), from the all-reduced votes, so that all stop at the same step."""
        if not env.distributed:
            return REQUEST.requested
        return synced and votes is not None and float(votes) > 0

    t0 = t_window = time.perf_counter()
    lr = lr_at(step, cfg.lr, warmup, total_steps, cfg.min_lr)
    bar = progress.add_task(
        f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches, completed=start, eta=eta.text()
    )

    def host_mean(meter: _Meter) -> dict[str, float]:
        """Bring running sums to the host (the only synchronisation points) and check the loss."""
        if meter.sums is None:
            return {}
        parts = [meter.sums / max(meter.n, 1)]
        if meter.grad is not None:
            parts.append((meter.grad / max(meter.n_grad, 1)).reshape(1))
        values = torch.cat(parts).tolist()
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(
                f"non-finite loss ({values[0]}) at epoch {epoch + 1} by step {step} (lr {lr:.3g}): "
                "lower lr, raise warmup_epochs, set clip_grad, or use bf16 / fp32 instead of "
                f"fp16; the checkpoints in {run.root} are from before it"
            )
        out = dict(zip(names, values[: len(names)], strict=True))
        if meter.grad is not None:
            out["grad_norm"] = values[-1]
        return out

    #: the last optimizer step boundary: (micro-batches of the epoch done, the meters there)
    boundary = (start, copy.copy(so_far), copy.copy(window))
    for i, batch in _fetched(task, start, saver is not None):
        if i == LOST:  # a worker died during a requested stop: stop at the last step boundary
            done, so_far, window = boundary
            optimizer.zero_grad(set_to_none=True)  # an accumulation in progress is dropped
            host_mean(so_far)  # nothing non-finite is saved
            if saver is not None:
                saver.save(epoch, done, step, names=names, meters={"epoch": so_far, "window": window})
            progress.remove_task(bar)
            return step, {
                "event": "stop",
                "epoch": epoch + 1,
                "batch": done,
                "step": step,
                "signal": stopped_by(),
            }
        if "error" in batch:  # a case a DataLoader worker could not crop (hiend_train.data.NamedCases)
            raise InputError(batch["error"])
        micro = i % cfg.grad_accum
        last_micro = micro == cfg.grad_accum - 1 or i == n_batches - 1
        if micro == 0:
            torch.manual_seed(step_seed(cfg.seed, step, env.rank))
            lr = lr_at(step, cfg.lr, warmup, total_steps, cfg.min_lr)
            set_lr(optimizer, lr)
        sync = env.distributed and not last_micro
        with model.no_sync() if sync else contextlib.nullcontext():
            with (
                autocast(precision, device),
                naming_bad_cases(batch["image"], batch.get("case", []), task.cache, f"epoch {epoch + 1}"),
            ):
                loss, metrics = task.loss_fn(model, batch)
            scaled = loss / cfg.grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        norm = None
        if last_micro:
            if scaler is not None:
                scaler.unscale_(optimizer)  # the norm (and clipping) of the true gradients
            if cfg.clip_grad is not None:
                norm = torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.clip_grad)
            else:
                norm = grad_norm(task.model.parameters())
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        # loss and metrics stay on the device (no host sync per step), averaged over processes
        names = names or ["loss", *metrics]
        stats = torch.stack(
            [
                loss.detach().float().reshape(()),
                *(
                    torch.as_tensor(v, dtype=torch.float32, device=loss.device).reshape(())
                    for v in metrics.values()
                ),
            ]
        ).double()
        if env.distributed:  # each rank's stop mark rides along the all-reduce it does anyway
            stats = torch.cat(
                [stats, torch.full((1,), float(REQUEST.requested), dtype=stats.dtype, device=stats.device)]
            )
        all_sum(env, stats)
        if env.distributed:
            votes = torch.maximum(votes, stats[-1]) if votes is not None else stats[-1]
            stats = stats[:-1]
        stats /= env.world
        so_far.add(stats)
        window.add(stats)
        if norm is not None:  # DDP averaged the gradients already: the same norm on every rank
            so_far.add_grad(norm)
            window.add_grad(norm)
        crops += int(batch["image"].shape[0]) * env.world
        crops_window += int(batch["image"].shape[0]) * env.world
        if last_micro and step % cfg.log_every == 0:
            values = host_mean(window)
            now = time.perf_counter()
            events.emit(
                "step",
                epoch=epoch + 1,
                step=step,
                lr=lr,
                **values,
                crops_per_s=crops_window / max(now - t_window, 1e-9),
            )
            window, crops_window, t_window = _Meter(), 0, now
            progress.update(bar, description=f"epoch {epoch + 1}/{cfg.epochs} loss {values['loss']:.4f}")
        if last_micro:
            boundary = (i + 1, copy.copy(so_far), copy.copy(window))  # (_Meter.add makes new tensors)
        eta.advance()
        progress.update(bar, advance=1, eta=eta.text())
        if saver is not None and last_micro:
            if i == n_batches - 1:  # the epoch end saves (fit)
                saver.pending = saver.pending or saver.due(step)
                continue
            preempted = stop_asked(step % cfg.log_every == 0)
            stop = preempted or (cfg.stop_after_steps is not None and step >= cfg.stop_after_steps)
            if stop:
                host_mean(so_far)  # on every rank: nothing non-finite is saved
            periodic = saver.due(step)
            if stop or periodic:
                saver.save(
                    epoch,
                    i + 1,
                    step,
                    names=names,
                    meters={"epoch": so_far, "window": window},
                    periodic=periodic,
                )
            if stop:
                progress.remove_task(bar)
                record = {"event": "stop", "epoch": epoch + 1, "batch": i + 1, "step": step}
                return step, {**record, "signal": stopped_by()} if preempted else record
    progress.remove_task(bar)
    values = host_mean(so_far)
    seconds = time.perf_counter() - t0
    record = {
        "event": "epoch",
        "epoch": epoch + 1,
        "step": step,
        "lr": lr,
        **values,
        "crops_per_s": crops / max(seconds, 1e-9),
        "seconds": seconds,
    }
    if stop_asked(True):  # the epoch end syncs every rank (host_mean above)
        record["signal"] = stopped_by()
    return step, record


def progress_bar(enabled: bool) -> Progress:
    """The run's rich progress bar and its console, on stderr (stdout is for results: the command's
    last line is a JSON summary): the epoch's micro-batches, its elapsed time and the whole run's ETA
    (:class:`RunEta`, the task field ``eta``). ``enabled=False`` (``progress = false``, ``--quiet``,
    ranks other than 0) is rich's ``disable=``, and a quiet console: the same calls, nothing drawn or
    printed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        transient=True,
        disable=not enabled,
        console=Console(stderr=True, quiet=not enabled),
    )


def save_weights(task: Task, path: Any, epoch: int, step: int, extra: dict[str, Any] | None = None) -> None:
    """``task.model`` (unwrapped from ``torch.compile`` where it is wrapped: the module's own keys) as a
    hiend checkpoint with the task's plan and where in the run it was saved."""
    from hiend_model.checkpoint import save_checkpoint

    with writing(path):  # a full disk: one line naming the file (hiend_train.outputs)
        save_checkpoint(
            path,
            unwrap(task.model),
            plan=task.plan,
            extra={
                "hiend_train": {"kind": task.kind, "epoch": epoch, "step": step, **(extra or {})},
                **task.extra,
            },
        )


class Checkpointer:
    """The run's checkpoints: last.safetensors + state.pt (rank 0 writes) at epoch ends (every
    ``save_every`` epochs and the last), every ``save_every_steps`` optimizer steps and every
    ``save_every_minutes`` (periodic: inside epochs too, and each also kept as
    ``RUN/checkpoints/step_NNNNNNNN.*``, the newest ``keep_last``), and where ``stop_after_steps``
    stops the run.

    A checkpoint is taken between optimizer steps (no gradient being accumulated), in three atomic
    steps (:meth:`RunDir.stage_state`, the weights, :meth:`RunDir.commit_state`) so that a save stopped
    anywhere leaves a pair of files that agree (:mod:`hiend_train.rundir`). state.pt holds the
    optimizer, the grad scaler, ``epoch`` (epochs done), ``batch`` (micro-batches done of the next
    epoch; 0 at an epoch end), ``step`` (optimizer steps done), the best score, torch's RNG states and,
    inside an epoch, ``running``: the epoch's running sums (names, ``epoch``, ``window``). The torch
    seed of each step comes from (seed, step, rank) (:func:`step_seed`) and the data order and crops
    from (seed, epoch, case), so nothing else is needed to continue exactly.
    """

    def __init__(
        self,
        task: Task,
        optimizer: Any,
        scaler: Any,
        cfg: TrainConfig,
        env: DistEnv,
        run: RunDir,
        best: float | None = None,
    ) -> None:
        self.task, self.optimizer, self.scaler = task, optimizer, scaler
        self.cfg, self.env, self.run = cfg, env, run
        #: the best score so far (kept in state.pt)
        self.best = best
        #: a periodic save fell due after an epoch's last step: the epoch end takes it
        self.pending = False
        self.last_save = clock()

    def due(self, step: int) -> bool:
        """Is a periodic save due after optimizer step ``step``? By steps every rank agrees; by
        minutes only rank 0's clock counts (saving involves no other rank)."""
        cfg = self.cfg
        if cfg.save_every_steps is not None and step % cfg.save_every_steps == 0:
            return True
        return (
            cfg.save_every_minutes is not None
            and self.env.main
            and clock() - self.last_save >= 60.0 * cfg.save_every_minutes
        )

    def save(
        self,
        epoch: int,
        batch: int,
        step: int,
        names: list[str] | None = None,
        meters: dict[str, _Meter] | None = None,
        periodic: bool = False,
    ) -> bool:
        """Write the checkpoint after ``epoch`` epochs, ``batch`` micro-batches of the next and
        ``step`` optimizer steps (``meters``: the running sums inside an epoch); ``periodic`` keeps a
        step-named copy and prunes to ``keep_last``. Returns whether this rank wrote (rank 0, and,
        inside an epoch, only with a finite loss so far: a periodic save skipped for a non-finite
        loss is followed by the NonFiniteLoss of the next log line or the epoch end)."""
        self.last_save = clock()
        self.pending = False
        if not self.env.main:
            return False
        running: dict[str, Any] = {}
        if meters:
            running = {"names": list(names or []), **{k: m.state() for k, m in meters.items()}}
            sums = running["epoch"]["sums"]
            if sums is not None and not math.isfinite(sums[0]):
                return False
        # three atomic steps, so that a save stopped anywhere leaves a consistent pair (rundir's docs)
        try:
            self._save(epoch, batch, step, running)
        except OSError as exc:  # a full disk, a read-only folder (hiend_train.outputs names the file)
            if exc.errno not in USER_ERRNOS:
                raise
            raise InputError(self._not_saved(exc, epoch, step)) from None
        if periodic:
            self.run.keep_periodic(step, self.cfg.keep_last)
        return True

    def _save(self, epoch: int, batch: int, step: int, running: dict[str, Any]) -> None:
        """The three steps; on an OSError the previous checkpoint stays as it was, with no new file."""
        staged = self.run.stage_state(
            {
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rng_state(),
                "best": self.best,
                "running": running,
            }
        )
        try:
            save_weights(self.task, self.run.last, epoch, step, {"batch": batch})
        except OSError:  # nothing replaced (atomic): the staged state would pair with nothing
            staged.unlink(missing_ok=True)
            raise
        self.run.commit_state(staged)

    def _not_saved(self, exc: OSError, epoch: int, step: int) -> str:
        """The line for a checkpoint that could not be written (a full disk, a read-only folder)."""
        what = exc.strerror or os.strerror(exc.errno or 0)
        where = f"{exc.filename or self.run.root}: {what[:1].lower() + what[1:]}"
        if self.run.has_checkpoint():
            at = self.run.last_saved() or {}
            kept = f"the previous one (epoch {at.get('epoch')}, step {at.get('step')}) is intact"
            then = "free space, then continue with --resume"
        else:
            kept, then = "no checkpoint was saved before", "free space, then start again"
        return f"{where}: the checkpoint of epoch {epoch}, step {step} was not saved; {kept}; {then}"


@dataclass
class ResumePoint:
    """Where a resumed run continues: ``epoch`` epochs and ``batch`` micro-batches of the next done,
    ``step`` optimizer steps; the best score, the running sums inside the epoch, the checkpoint used."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float | None = None
    running: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    state: str = ""


def _resume(task: Task, optimizer: Any, scaler: Any, run: RunDir) -> tuple[ResumePoint, list[str]]:
    """Load the newest consistent checkpoint: last.safetensors + state.pt, else (a run stopped
    while saving) last.safetensors + its staged state, else the newest periodic one whose files
    agree. Returns it and why newer ones were passed over (InputError when none agrees)."""
    from safetensors.torch import load_file

    from hiend_model.checkpoint import read_checkpoint_info

    passed: list[str] = []
    for weights, state_path in run.resume_candidates():
        if not (weights.is_file() and state_path.is_file()):
            continue
        state = run.load_state(path=state_path)
        saved = (read_checkpoint_info(weights).extra or {}).get("hiend_train", {})
        at = (saved.get("epoch"), saved.get("batch", 0), saved.get("step"))
        want = (state["epoch"], state.get("batch", 0), state["step"])
        if at != want:
            passed.append(
                f"{_rel(weights, run.root)} (epoch {at[0]}, batch {at[1]}, step {at[2]}) and "
                f"{_rel(state_path, run.root)} (epoch {want[0]}, batch {want[1]}, step {want[2]}) disagree"
            )
            continue
        model = unwrap(task.model)
        model.load_state_dict(
            load_file(str(weights), device=str(next(model.parameters()).device)), strict=True
        )
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        point = ResumePoint(
            epoch=int(state["epoch"]),
            batch=int(state.get("batch", 0)),
            step=int(state["step"]),
            best=state.get("best"),
            running=state.get("running") or {},
            checkpoint=_rel(weights, run.root),
            state=_rel(state_path, run.root),
        )
        return point, passed
    raise InputError(
        f"{run.root}: no checkpoint to resume from ({'; '.join(passed) or 'no weights and state'}); "
        "the run was interrupted while saving"
    )


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _remaining(cfg: TrainConfig, point: ResumePoint, end: int, n_batches: int) -> int:
    """Micro-batches this invocation will run: the epochs up to ``end`` from ``point``, up to
    ``stop_after_steps`` where set."""
    left = max(end - point.epoch, 0) * n_batches - point.batch
    if cfg.stop_after_steps is not None:
        left = min(left, max(cfg.stop_after_steps - point.step, 0) * cfg.grad_accum)
    return left


def fit(
    task: Task,
    optimizer: Any,
    scaler: Any,
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
    point = ResumePoint()
    if resume:
        point, passed = _resume(task, optimizer, scaler, run)
        for why in passed:
            events.emit(
                "warning",
                message=f"{why} (interrupted while saving): resuming from {point.checkpoint} + {point.state} "
                f"(epoch {point.epoch}, batch {point.batch}, step {point.step})",
            )
        events.emit(
            "resume", epoch=point.epoch, batch=point.batch, step=point.step, checkpoint=point.checkpoint
        )
    start, step, best = point.epoch, point.step, point.best
    saver = Checkpointer(task, optimizer, scaler, cfg, env, run, best)
    history: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    end = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    eta = RunEta(_remaining(cfg, point, end, len(task.loader)))
    epochs_done, stopped, signal = start, False, None
    with progress_bar(cfg.progress and env.main) as progress:
        for epoch in range(start, end):
            if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
                stopped = True
                break
            torch.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))
            task.sampler.set_epoch(epoch)
            task.dataset.set_epoch(epoch)
            skip = point.batch if epoch == start else 0
            step, record = train_one_epoch(
                task,
                optimizer,
                scaler,
                cfg,
                env,
                run,
                epoch,
                step,
                precision,
                progress,
                events,
                start=skip,
                resumed=point.running if skip else None,
                saver=saver,
                eta=eta,
            )
            if record["event"] == "stop":
                events.emit(**record)
                stopped, signal = True, record.get("signal")
                break
            signal = record.pop("signal", None)
            if signal is not None and task.on_epoch_end is not None:
                events.emit(
                    "warning", message=f"{signal}: epoch {epoch + 1}'s validation skipped to save in time"
                )
            elif task.on_epoch_end is not None:
                record.update(task.on_epoch_end(epoch))
            score = record.pop("score", None)
            done = epoch + 1
            if score is not None and (best is None or score > best):
                best = score
                if env.main:
                    save_weights(task, run.best, done, step, {"score": score})
            record["best_score"] = saver.best = best
            stop = signal is not None or (cfg.stop_after_steps is not None and step >= cfg.stop_after_steps)
            periodic = saver.pending
            if done % cfg.save_every == 0 or done == end or stop or periodic:
                saver.save(done, 0, step, periodic=periodic)
            events.emit(**record)
            history.append(record)
            last = record
            epochs_done = done
            progress.console.print(markup(_summary(record)))  # rich markup: nothing in it is parsed
            if stop and (done < end or signal is not None):
                events.emit("stop", epoch=done, batch=0, step=step, **({"signal": signal} if signal else {}))
                stopped = True
                break
    return FitResult(
        epochs=epochs_done, steps=step, last=last, best=best, history=history, stopped=stopped, signal=signal
    )


def _summary(record: dict[str, Any]) -> str:
    keys = [
        k
        for k in record
        if k not in ("event", "seconds", "best_score") and isinstance(record[k], (int, float))
    ]
    return "  ".join(
        f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in keys
    )
