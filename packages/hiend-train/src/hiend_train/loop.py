"""The training loop shared by pre-training and fine-tuning, apart from their setup.

:func:`train_one_epoch` runs one pass over the loader (autocast, gradient accumulation, DDP no_sync,
per-iteration learning rate, a non-finite loss stops the run); :func:`fit` runs the epochs around it:
resume, per-epoch seeding, validation hooks, checkpoints and training state, events. Both report
through an :class:`~hiend_train.events.EventSink` (default: the run folder's log.jsonl) and draw one
rich progress bar, switched off by ``disable=`` where it is not wanted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .config import TrainConfig
from .dist import DistEnv, all_sum
from .events import EventSink
from .optim import lr_at, set_lr
from .rundir import RunDir, rng_state, set_rng_state

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
    per-parameter learning-rate multipliers for :func:`~hiend_train.optim.build_optimizer` (None: all 1).
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


@dataclass
class FitResult:
    """What a run did: epochs done, optimizer steps, the last epoch's log record, the best score."""

    epochs: int
    steps: int
    last: dict[str, Any]
    best: float | None
    history: list[dict[str, Any]]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA (``fp16`` where the GPU lacks bf16), ``fp32`` on CPU."""
    from hiend_data.errors import InputError

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
    """The torch seed of (run seed, epoch, rank): masking noise and drop-path depend on nothing else,
    so a resumed run draws exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def optimizer_steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` micro-batches (the last step may take fewer)."""
    return max(1, math.ceil(n_batches / grad_accum))


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
) -> tuple[int, dict[str, Any]]:
    """One pass over ``task.loader``; returns (global optimizer step after it, epoch record).

    Learning rate per optimizer step from :func:`~hiend_train.optim.lr_at`. Loss and metrics are
    averaged over processes on the device and reach the host only at ``step`` events (every
    ``log_every`` optimizer steps, to ``events``; default ``run.events``, log.jsonl) and at the end of
    the epoch: that is where a non-finite loss stops the run, on every rank at once, before anything is
    saved. ``progress``: the bar of :func:`progress_bar` (None: one that draws nothing).
    """
    events = run.events if events is None else events
    progress = progress_bar(False) if progress is None else progress
    n_batches = len(task.loader)
    per_epoch = optimizer_steps_per_epoch(n_batches, cfg.grad_accum)
    total, warmup = cfg.epochs * per_epoch, cfg.warmup_epochs * per_epoch
    device = env.device
    model = task.ddp_model
    model.train()
    names: list[str] = []
    sums = window = None  # running sums on the device: [loss, *metrics], summed over micro-batches
    n_micro = n_window = crops = crops_window = 0
    t0 = t_window = time.perf_counter()
    lr = lr_at(step, cfg.lr, warmup, total, cfg.min_lr)
    bar = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches)

    def host_mean(acc: torch.Tensor, n: int) -> dict[str, float]:
        """Bring a running sum to the host (the only synchronisation points) and check the loss."""
        values = (acc / max(n, 1)).tolist()
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(
                f"non-finite loss ({values[0]}) at epoch {epoch + 1} by step {step} (lr {lr:.3g}): "
                "lower lr, raise warmup_epochs, set clip_grad, or use bf16 / fp32 instead of "
                f"fp16; the last checkpoint in {run.root} is from before this epoch"
            )
        return dict(zip(names, values, strict=True))

    for i, batch in enumerate(task.loader):
        micro = i % cfg.grad_accum
        last_micro = micro == cfg.grad_accum - 1 or i == n_batches - 1
        if micro == 0:
            lr = lr_at(step, cfg.lr, warmup, total, cfg.min_lr)
            set_lr(optimizer, lr)
        sync = env.distributed and not last_micro
        with model.no_sync() if sync else contextlib.nullcontext():
            with autocast(precision, device):
                loss, metrics = task.loss_fn(model, batch)
            scaled = loss / cfg.grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last_micro:
            if cfg.clip_grad is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.clip_grad)
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
        all_sum(env, stats)
        stats /= env.world
        sums = stats.clone() if sums is None else sums + stats
        window = stats.clone() if window is None else window + stats
        n_micro += 1
        n_window += 1
        crops += int(batch["image"].shape[0]) * env.world
        crops_window += int(batch["image"].shape[0]) * env.world
        if last_micro and step % cfg.log_every == 0:
            values = host_mean(window, n_window)
            now = time.perf_counter()
            events.emit(
                "step",
                epoch=epoch + 1,
                step=step,
                lr=lr,
                **values,
                crops_per_s=crops_window / max(now - t_window, 1e-9),
            )
            window, n_window, crops_window, t_window = None, 0, 0, now
            progress.update(bar, description=f"epoch {epoch + 1}/{cfg.epochs} loss {values['loss']:.4f}")
        progress.update(bar, advance=1)
    progress.remove_task(bar)
    values = host_mean(sums, n_micro) if sums is not None else {}
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
    return step, record


def progress_bar(enabled: bool) -> Progress:
    """The run's rich progress bar and its console, on stderr (stdout is for results: the command's
    last line is a JSON summary). ``enabled=False`` (``progress = false``, ``--quiet``, ranks other than
    0) is rich's ``disable=``, and a quiet console: the same calls, nothing drawn or printed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
        console=Console(stderr=True, quiet=not enabled),
    )


def save_weights(task: Task, path: Any, epoch: int, step: int, extra: dict[str, Any] | None = None) -> None:
    """The model as a hiend checkpoint with the task's plan and where in the run it was saved."""
    from hiend_model.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        task.model,
        plan=task.plan,
        extra={
            "hiend_train": {"kind": task.kind, "epoch": epoch, "step": step, **(extra or {})},
            **task.extra,
        },
    )


def _resume(task: Task, optimizer: Any, scaler: Any, run: RunDir) -> tuple[int, int, float | None]:
    """Load last.safetensors and state.pt; returns (epochs done, optimizer steps, best score)."""
    from safetensors.torch import load_file

    from hiend_data.errors import InputError
    from hiend_model.checkpoint import read_checkpoint_info

    state = run.load_state()
    info = read_checkpoint_info(run.last)
    saved_epoch = (info.extra or {}).get("hiend_train", {}).get("epoch")
    if saved_epoch != state["epoch"]:
        raise InputError(
            f"{run.root}: last.safetensors (epoch {saved_epoch}) and state.pt (epoch "
            f"{state['epoch']}) disagree; the run was interrupted while saving"
        )
    weights = load_file(str(run.last), device=str(next(task.model.parameters()).device))
    task.model.load_state_dict(weights, strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"]), state.get("best")


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
    """Train ``task`` for the epochs of ``cfg`` (from where state.pt left off with ``resume``);
    ``step`` and ``epoch`` events go to ``events`` (default ``run.events``: log.jsonl)."""
    events = run.events if events is None else events
    start, step, best = _resume(task, optimizer, scaler, run) if resume else (0, 0, None)
    history: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    end = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    with progress_bar(cfg.progress and env.main) as progress:
        for epoch in range(start, end):
            torch.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))
            task.sampler.set_epoch(epoch)
            task.dataset.set_epoch(epoch)
            step, record = train_one_epoch(
                task, optimizer, scaler, cfg, env, run, epoch, step, precision, progress, events
            )
            if task.on_epoch_end is not None:
                record.update(task.on_epoch_end(epoch))
            score = record.pop("score", None)
            done = epoch + 1
            if score is not None and (best is None or score > best):
                best = score
                if env.main:
                    save_weights(task, run.best, done, step, {"score": score})
            record["best_score"] = best
            if done % cfg.save_every == 0 or done == end:
                if env.main:
                    save_weights(task, run.last, done, step)
                    run.save_state(
                        {
                            "epoch": done,
                            "step": step,
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else {},
                            "rng": rng_state(),
                            "best": best,
                        }
                    )
            events.emit(**record)
            history.append(record)
            last = record
            progress.console.print(_summary(record))
    return FitResult(epochs=max(end, start), steps=step, last=last, best=best, history=history)


def _summary(record: dict[str, Any]) -> str:
    keys = [
        k
        for k in record
        if k not in ("event", "seconds", "best_score") and isinstance(record[k], (int, float))
    ]
    return "  ".join(
        f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in keys
    )
