"""What a run shows of itself while it trains: running means, step and epoch records, the ETA and the
progress bar.

The loss, the metrics and the gradient norm are summed on the device (:class:`Meter`) and reach the
host only at ``step`` lines (every ``log_every`` optimizer steps), at epoch ends and at saves
(:meth:`RunningMeans.means`, the only synchronisation points): no host sync per step. That is also
where a non-finite loss is seen (:class:`NonFiniteLoss`), on every rank at once.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .checkpointing import ResumePoint
    from .config import TrainConfig


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops (its last checkpoint stays as it was; the
    command exits with :data:`hiend_train.cli.NON_FINITE`)."""


class Meter:
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
    def from_state(cls, state: Mapping[str, Any] | None, device: torch.device | None) -> Meter:
        """What :meth:`state` returned, back on ``device`` (None or {}: empty)."""
        meter = cls()
        if state:
            if state.get("sums") is not None:
                meter.sums = torch.tensor(state["sums"], dtype=torch.float64, device=device)
            if state.get("grad") is not None:
                meter.grad = torch.tensor(state["grad"], dtype=torch.float64, device=device)
            meter.n, meter.n_grad = int(state.get("n", 0)), int(state.get("n_grad", 0))
        return meter


def step_stats(loss: torch.Tensor, metrics: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """``[loss, *metrics]`` of a micro-batch as one float64 tensor on the loss's device (no host sync)."""
    return torch.stack(
        [
            loss.detach().float().reshape(()),
            *(
                torch.as_tensor(v, dtype=torch.float32, device=loss.device).reshape(())
                for v in metrics.values()
            ),
        ]
    ).double()


@dataclass
class Where:
    """Where the means are read, for the :class:`NonFiniteLoss` message."""

    epoch: int
    step: int
    lr: float
    root: Path


class RunningMeans:
    """The running sums of an epoch: ``epoch`` (the epoch so far) and ``window`` (since the previous
    step line), the metric ``names``, and the crops counted for crops/s.

    ``resumed``: the ``running`` entry of a state.pt saved inside the epoch (:meth:`state`), so that
    the step and epoch lines of a resumed run equal an uninterrupted run's."""

    def __init__(self, resumed: Mapping[str, Any] | None, device: torch.device | None) -> None:
        resumed = resumed or {}
        self.names: list[str] = list(resumed.get("names", []))
        self.epoch = Meter.from_state(resumed.get("epoch"), device)
        self.window = Meter.from_state(resumed.get("window"), device)
        self.crops = self.crops_window = 0  # in this pass, for crops/s
        self.t0 = self.t_window = time.perf_counter()

    def add(self, stats: torch.Tensor, norm: torch.Tensor | None, crops: int) -> None:
        """One micro-batch's averaged ``stats`` (:func:`step_stats`), the step's gradient ``norm``
        (None inside an accumulation), and the ``crops`` it held over all processes."""
        self.epoch.add(stats)
        self.window.add(stats)
        if norm is not None:  # DDP averaged the gradients already: the same norm on every rank
            self.epoch.add_grad(norm)
            self.window.add_grad(norm)
        self.crops += crops
        self.crops_window += crops

    def means(self, meter: Meter, where: Where) -> dict[str, float]:
        """The means of ``meter`` on the host (a synchronisation); NonFiniteLoss when the loss is not
        finite (every rank reads the same all-reduced sums, so every rank raises)."""
        if meter.sums is None:
            return {}
        parts = [meter.sums / max(meter.n, 1)]
        if meter.grad is not None:
            parts.append((meter.grad / max(meter.n_grad, 1)).reshape(1))
        values = torch.cat(parts).tolist()
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(
                f"non-finite loss ({values[0]}) at epoch {where.epoch + 1} by step {where.step} "
                f"(lr {where.lr:.3g}): lower lr, raise warmup_epochs, set clip_grad, or use bf16 / fp32 "
                f"instead of fp16; the checkpoints in {where.root} are from before it"
            )
        out = dict(zip(self.names, values[: len(self.names)], strict=True))
        if meter.grad is not None:
            out["grad_norm"] = values[-1]
        return out

    def step_line(self, where: Where) -> dict[str, float]:
        """The fields of a ``step`` event (the window's means and crops/s); the window starts again."""
        values = self.means(self.window, where)
        now = time.perf_counter()
        values["crops_per_s"] = self.crops_window / max(now - self.t_window, 1e-9)
        self.window, self.crops_window, self.t_window = Meter(), 0, now
        return values

    def epoch_record(self, where: Where) -> dict[str, Any]:
        """The ``epoch`` event of the whole pass."""
        values = self.means(self.epoch, where)
        seconds = time.perf_counter() - self.t0
        return {
            "event": "epoch",
            "epoch": where.epoch + 1,
            "step": where.step,
            "lr": where.lr,
            **values,
            "crops_per_s": self.crops / max(seconds, 1e-9),
            "seconds": seconds,
        }

    def snapshot(self) -> tuple[Meter, Meter]:
        """The sums at an optimizer step boundary (:meth:`Meter.add` makes new tensors: a shallow
        copy is a snapshot)."""
        return copy.copy(self.epoch), copy.copy(self.window)

    def restore(self, snapshot: tuple[Meter, Meter]) -> None:
        self.epoch, self.window = snapshot

    def state(self) -> dict[str, Any]:
        """The ``running`` entry of state.pt: names, ``epoch`` and ``window`` (a host sync)."""
        return {"names": list(self.names), "epoch": self.epoch.state(), "window": self.window.state()}


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


def remaining(cfg: TrainConfig, point: ResumePoint, end: int, n_batches: int) -> int:
    """Micro-batches this invocation will run from ``point`` (epochs, micro-batches of the next and
    optimizer steps done): the epochs up to ``end``, up to ``stop_after_steps`` where set."""
    left = max(end - point.epoch, 0) * n_batches - point.batch
    if cfg.stop_after_steps is not None:
        left = min(left, max(cfg.stop_after_steps - point.step, 0) * cfg.grad_accum)
    return left


def optimizer_steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``n_batches`` micro-batches (the last step may take fewer)."""
    return max(1, math.ceil(n_batches / grad_accum))


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


def summary(record: Mapping[str, Any]) -> str:
    """The epoch line printed under the bar: the record's numbers (not its event, time, best score)."""
    keys = [
        k
        for k in record
        if k not in ("event", "seconds", "best_score") and isinstance(record[k], (int, float))
    ]
    return "  ".join(
        f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}" for k in keys
    )
