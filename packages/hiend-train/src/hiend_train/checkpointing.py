"""Checkpoints: when a run saves or stops, how a save is written, and how ``--resume`` reads it back.

A checkpoint is two files: the weights (``last.safetensors``, a hiend checkpoint with the task's plan
and, in ``extra.hiend_train``, the ``stage`` and where in the run it was saved) and the training state
(``state.pt``: optimizer, grad scaler, ``epoch`` epochs done, ``batch`` micro-batches done of the next
epoch (0 at an epoch end), ``step`` optimizer steps done, the best score, torch's RNG states and,
inside an epoch, ``running``: the epoch's running sums; ``hooks``: the task's step hook's state, the
probe's best score and last probed step). The folder layout is
:mod:`hiend_train.rundir`'s.

A save happens between optimizer steps (no gradient being accumulated), in three atomic steps
(:func:`stage_state`, the weights, :func:`commit_state`): the state goes to ``state_NNNNNNNN.pt``
(named by its optimizer step), then ``last.safetensors`` is replaced, then ``state_NNNNNNNN.pt`` is
renamed over ``state.pt``. Stopped anywhere (kill -9, SIGINT, a full disk), the folder holds a
consistent pair: before the weights, last.safetensors + state.pt (the previous save); after them,
last.safetensors + state_NNNNNNNN.pt, which :func:`resume_candidates` offers right after the pair.
Every file is written under a temporary name, fsync-ed and renamed (:mod:`hiend_data.atomic`);
``state.pt`` is read with ``torch.load(weights_only=True)``: only tensors, numbers, strings, lists
and dicts.

When (:class:`Checkpointer`): at epoch ends (every ``save_every`` epochs and the last), every
``save_every_steps`` optimizer steps and every ``save_every_minutes`` (periodic: inside epochs too,
and each also kept as ``RUN/checkpoints/step_NNNNNNNN.*``, the newest ``keep_last``), and where the
run stops (``stop_after_steps``, a signal: :mod:`hiend_train.signals`). The torch seed of each step
comes from (seed, step, rank) (:func:`hiend_train.precision.step_seed`) and the data order and crops
from (seed, epoch, case), so nothing else is needed to continue exactly.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hiend_data.atomic import atomic_path, fsync_dir
from hiend_data.errors import USER_ERRNOS, InputError

from .outputs import writing
from .signals import interrupts_deferred
from .task import JSON, Task, unwrap

if TYPE_CHECKING:
    from .config import TrainConfig
    from .dist import DistEnv
    from .progress import RunningMeans
    from .rundir import RunDir

STATE_FORMAT = "hiend-train-state/1"

#: the key of a checkpoint's ``extra`` that holds where in the run it was saved
TRAIN_KEY = "hiend_train"

#: the clock of ``save_every_minutes`` (seconds; a module attribute, so that tests can replace it)
clock: Callable[[], float] = time.monotonic


# -- the weights ------------------------------------------------------------------------------------
def save_weights(
    task: Task, path: str | os.PathLike[str], epoch: int, step: int, extra: Mapping[str, JSON] | None = None
) -> None:
    """``task.model`` (unwrapped from ``torch.compile`` where it is wrapped: the module's own keys) as a
    hiend checkpoint with the task's plan, its ``stage`` and where in the run it was saved
    (``extra.hiend_train``: ``stage``, ``epoch``, ``step``, and ``batch`` or ``score``)."""
    from hiend_model.checkpoint import save_checkpoint

    with writing(path):  # a full disk: one line naming the file (hiend_train.outputs)
        save_checkpoint(
            path,
            unwrap(task.model),
            plan=task.plan,
            extra={
                TRAIN_KEY: {"stage": task.stage, "epoch": epoch, "step": step, **(extra or {})},
                **task.extra,
            },
        )


def train_metadata(extra: Mapping[str, JSON] | None) -> dict[str, JSON]:
    """``extra.hiend_train`` of a checkpoint's metadata ({} when absent). Checkpoints saved before
    the key ``stage`` existed call it ``kind``: it is read as ``stage``."""
    saved = (extra or {}).get(TRAIN_KEY)
    if not isinstance(saved, dict):
        return {}
    saved = dict(saved)
    if "stage" not in saved and saved.get("kind") in ("pretrain", "finetune"):
        saved["stage"] = saved.pop("kind")
    return saved


def saved_at(path: str | os.PathLike[str]) -> dict[str, JSON]:
    """``extra.hiend_train`` of the checkpoint at ``path`` (:func:`train_metadata`)."""
    from hiend_model.checkpoint import read_checkpoint_info

    return train_metadata(read_checkpoint_info(path).extra)


def last_saved(run: RunDir) -> dict[str, JSON] | None:
    """Where RUN/last.safetensors was saved (``stage``, ``epoch``, ``batch``, ``step`` of its
    metadata), or None when there is none or it cannot be read (for messages)."""
    if not run.last.is_file():
        return None
    try:
        return saved_at(run.last) or None
    except Exception:  # noqa: BLE001 - for a message only
        return None


# -- the training state ------------------------------------------------------------------------------
def rng_state() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """torch's CPU and CUDA generator states as uint8 tensors (weights_only-loadable)."""
    out: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write (a full disk) keeps its OSError as
    the context of torch's RuntimeError, which :func:`hiend_train.outputs.writing` reads."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def stage_state(run: RunDir, state: Mapping[str, Any]) -> Path:
    """First step of a save: ``state`` (with its ``step``) to ``RUN/state_NNNNNNNN.pt``, atomically;
    state.pt is untouched. Returns the path for :func:`commit_state` (only the writer rank writes)."""
    path = run.staged_state_path(int(state["step"]))
    if run.writer:
        with writing(path), atomic_path(path, mkdir=False) as tmp:
            _torch_save({"format": STATE_FORMAT, **state}, tmp)
    return path


def commit_state(run: RunDir, staged: Path) -> None:
    """Last step of a save, once the weights are in place: the staged state becomes state.pt (one
    rename) and staged states of saves that never finished are removed."""
    if not run.writer:
        return
    os.replace(staged, run.state_path)
    fsync_dir(run.root)
    for stale in run.staged_states():
        stale.unlink(missing_ok=True)


def save_state(run: RunDir, state: Mapping[str, Any]) -> None:
    """``state`` to state.pt in one go (:func:`stage_state`, :func:`commit_state`)."""
    if run.writer:
        commit_state(run, stage_state(run, state))


def load_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state at ``path``, read with ``torch.load(weights_only=True)``; InputError naming
    the file when it is unreadable or not a hiend-train state."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(
            f"{path}: not a readable training state ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(
            f"{path}: not a hiend-train state file (format "
            f"{state.get('format') if isinstance(state, dict) else None!r})"
        )
    return state


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content atomically: a hard link under a temporary name renamed over
    ``dst``, or (no hard links on this filesystem) an atomic copy."""
    with writing(dst), atomic_path(dst, mkdir=False) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def keep_periodic(run: RunDir, step: int, keep: int) -> None:
    """Keep last.safetensors + state.pt (just written at optimizer step ``step``) as
    RUN/checkpoints/step_NNNNNNNN.safetensors / .pt, then delete all but the newest ``keep`` steps.

    The copies are hard links where the filesystem has them (no bytes written: the next save replaces
    last.safetensors by a new file, the link keeps the old one), else atomic copies."""
    if not run.writer:
        return
    if keep > 0:
        with writing(run.checkpoints):
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        weights, state = run.periodic_paths(step)
        _link_or_copy(run.last, weights)
        _link_or_copy(run.state_path, state)
    kept = run.periodic()
    for _, weights, state in kept[: max(len(kept) - keep, 0)]:
        state.unlink(missing_ok=True)  # the state first: a step without it no longer counts
        weights.unlink(missing_ok=True)


def resume_candidates(run: RunDir) -> list[tuple[Path, Path]]:
    """(weights, state) pairs to resume from, in order of preference: last.safetensors + state.pt,
    last.safetensors + a staged state (a save stopped after its weights, before its rename), then the
    periodic checkpoints, newest first. :func:`resume` takes the first whose files agree."""
    pairs = [(run.last, run.state_path)] + [(run.last, s) for s in run.staged_states()]
    return pairs + [(w, s) for _, w, s in reversed(run.periodic())]


# -- resume ----------------------------------------------------------------------------------------
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


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def resume(
    task: Task, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, run: RunDir
) -> tuple[ResumePoint, list[str]]:
    """Load the newest consistent checkpoint (:func:`resume_candidates`) into the model, optimizer,
    scaler and torch's RNG. Returns where it was saved and why newer ones were passed over (their
    weights and state disagree); InputError when none agrees."""
    from safetensors.torch import load_file

    passed: list[str] = []
    for weights, state_path in resume_candidates(run):
        if not (weights.is_file() and state_path.is_file()):
            continue
        state = load_state(state_path)
        saved = saved_at(weights)
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
        if task.on_step is not None:
            task.on_step.load_state_dict(state.get("hooks") or {})
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


# -- when to save, when to stop ------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """After an optimizer step or an epoch: ``save`` a checkpoint (``periodic``: also keep a step-named
    copy), then ``stop`` the run."""

    save: bool = False
    periodic: bool = False
    stop: bool = False


class Checkpointer:
    """The run's checkpoints (rank 0 writes): when to save and stop (:meth:`after_step`,
    :meth:`after_epoch`), and the save itself (:meth:`save`, :meth:`save_best`); see the module."""

    def __init__(
        self,
        task: Task,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
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

    def steps_done(self, step: int) -> bool:
        """Has the run reached ``stop_after_steps``?"""
        return self.cfg.stop_after_steps is not None and step >= self.cfg.stop_after_steps

    def after_step(self, step: int, epoch_end: bool, preempted: bool) -> Decision:
        """After optimizer step ``step`` inside an epoch: save when a periodic save is due, save and
        stop at ``stop_after_steps`` or when a signal asked (``preempted``). After the epoch's last
        step nothing happens here: a save due then is left to the epoch end (:attr:`pending`)."""
        if epoch_end:
            self.pending = self.pending or self.due(step)
            return Decision()
        stop = preempted or self.steps_done(step)
        periodic = self.due(step)
        return Decision(save=stop or periodic, periodic=periodic, stop=stop)

    def after_epoch(self, done: int, end: int, step: int, signal: str | None) -> Decision:
        """After ``done`` epochs (the run ends after ``end``): save every ``save_every`` epochs, at the
        end, when a periodic save is pending and where the run stops (a signal, ``stop_after_steps``);
        stop before ``end`` for those (a signal at the last epoch's end still reports the stop)."""
        stop = signal is not None or self.steps_done(step)
        periodic = self.pending
        save = done % self.cfg.save_every == 0 or done == end or stop or periodic
        return Decision(save=save, periodic=periodic, stop=stop and (done < end or signal is not None))

    def save_best(self, done: int, step: int, score: float) -> None:
        """A new best ``score`` after ``done`` epochs: best.safetensors (rank 0)."""
        self.best = score
        if self.env.main:
            with interrupts_deferred():
                save_weights(self.task, self.run.best, done, step, {"score": score})

    def save(
        self, epoch: int, batch: int, step: int, running: RunningMeans | None = None, periodic: bool = False
    ) -> bool:
        """Write the checkpoint after ``epoch`` epochs, ``batch`` micro-batches of the next and ``step``
        optimizer steps (``running``: the epoch's running sums inside an epoch); ``periodic`` keeps a
        step-named copy and prunes to ``keep_last``. Returns whether this rank wrote (rank 0, and,
        inside an epoch, only with a finite loss so far: a periodic save skipped for a non-finite loss
        is followed by the NonFiniteLoss of the next log line or the epoch end)."""
        self.last_save = clock()
        self.pending = False
        if not self.env.main:
            return False
        sums: dict[str, Any] = {}
        if running is not None:
            sums = running.state()
            loss = sums["epoch"]["sums"]
            if loss is not None and not math.isfinite(loss[0]):
                return False
        try:
            with interrupts_deferred():  # Ctrl-C lands between whole files (hiend_train.signals)
                self._save(epoch, batch, step, sums)
        except OSError as exc:  # a full disk, a read-only folder (hiend_train.outputs names the file)
            if exc.errno not in USER_ERRNOS:
                raise
            raise InputError(self._not_saved(exc, epoch, step)) from None
        if periodic:
            keep_periodic(self.run, step, self.cfg.keep_last)
        return True

    def _save(self, epoch: int, batch: int, step: int, running: dict[str, Any]) -> None:
        """The three steps; on an OSError the previous checkpoint stays as it was, with no new file."""
        staged = stage_state(
            self.run,
            {
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rng_state(),
                "best": self.best,
                "running": running,
                "hooks": self.task.on_step.state_dict() if self.task.on_step is not None else {},
            },
        )
        try:
            save_weights(self.task, self.run.last, epoch, step, {"batch": batch})
        except OSError:  # nothing replaced (atomic): the staged state would pair with nothing
            staged.unlink(missing_ok=True)
            raise
        commit_state(self.run, staged)

    def _not_saved(self, exc: OSError, epoch: int, step: int) -> str:
        """The line for a checkpoint that could not be written (a full disk, a read-only folder)."""
        what = exc.strerror or os.strerror(exc.errno or 0)
        where = f"{exc.filename or self.run.root}: {what[:1].lower() + what[1:]}"
        if self.run.has_checkpoint():
            at = last_saved(self.run) or {}
            kept = f"the previous one (epoch {at.get('epoch')}, step {at.get('step')}) is intact"
            then = "free space, then continue with --resume"
        else:
            kept, then = "no checkpoint was saved before", "free space, then start again"
        return f"{where}: the checkpoint of epoch {epoch}, step {step} was not saved; {kept}; {then}"
