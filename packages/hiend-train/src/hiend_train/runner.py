"""Setup shared by both kinds of run: process group, device, precision, cache, run folder, split.

``execute(cfg, resume, build)`` prepares a :class:`Context`, lets ``build(ctx)`` (pre-training or
fine-tuning) make the :class:`~hiend_train.task.Task`, then runs :func:`~hiend_train.loop.fit`. Every
event of the run goes to the sink of :func:`event_sink` (:mod:`hiend_train.events`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from hiend_data.cache import Cache
from hiend_data.errors import InputError

from .config import TrainConfig
from .data import close_loader, few_shot_split, open_cache
from .dist import DistEnv, broadcast_object, setup, teardown
from .events import EventSink, MultiSink, TensorBoardSink
from .loop import FitResult, fit
from .optim import build_optimizer
from .precision import make_scaler, resolve_precision
from .rundir import RunDir, RunLock, cache_identity
from .task import Task


@dataclass
class Context:
    """Everything a task builder needs: config, process, precision, cache, run folder, case split,
    and the run's event sink (emit only once :func:`execute` has started the run, e.g. in hooks)."""

    cfg: TrainConfig
    env: DistEnv
    precision: str
    cache: Cache
    run: RunDir
    train_idx: list[int]
    val_idx: list[int]
    resume: bool
    events: EventSink = field(default_factory=MultiSink)


@dataclass
class RunResult:
    """A finished (or stopped) run: where it wrote, what fit returned, the trained model (unwrapped)."""

    out: Path
    fit: FitResult
    model: torch.nn.Module
    env: DistEnv


def _check_run_dir(
    cfg: TrainConfig,
    resume: bool,
    env: DistEnv,
    split: dict[str, list[str]] | None = None,
    trained_on: dict[str, Any] | None = None,
    lock: RunLock | None = None,
) -> RunDir:
    """Rank 0 takes ``lock`` (:class:`~hiend_train.rundir.RunLock`: one run per folder) and checks RUN;
    every rank raises the same InputError (no rank is left waiting)."""
    if cfg.out is None:
        raise InputError('no run folder given (--out RUN, or out = "RUN" in the config file)')
    run = RunDir(cfg.out, writer=env.main)
    error = None
    if env.main:
        try:
            if lock is not None:
                lock.acquire()
            run.check(cfg, resume, split, trained_on)
        except InputError as exc:
            error = str(exc)
        except OSError as exc:  # RUN cannot be made (read-only, permissions): the user's place
            what = exc.strerror or os.strerror(exc.errno or 0)
            error = f"{exc.filename or run.root}: {what[:1].lower() + what[1:]}"
    error = broadcast_object(env, error)
    if error is not None:
        raise InputError(error)
    return run


def event_sink(cfg: TrainConfig, env: DistEnv, run: RunDir) -> MultiSink:
    """Where the run's events go: log.jsonl, and RUN/tb/ with ``tensorboard = true`` (rank 0 writes
    both). A new sink is added here and then gets every event of the run."""
    sink = MultiSink(run.events)
    if cfg.tensorboard:
        sink.add(TensorBoardSink(run.tb, enabled=env.main))
    return sink


def compile_model(task: Task, cfg: TrainConfig) -> None:
    """With ``compile = true``, the model the loss calls becomes ``torch.compile`` of it (of the DDP
    wrapper under DDP, as PyTorch advises); ``task.model`` stays the plain module, which checkpoints,
    validation and previews use. Compilation happens at the first step (minutes on a CPU)."""
    if cfg.compile:
        task.ddp_model = torch.compile(task.ddp_model)


def execute(cfg: TrainConfig, resume: bool, build: Callable[[Context], Task]) -> RunResult:
    """Run ``cfg`` end to end: torchrun's process group when WORLD_SIZE > 1, then fit.

    Every check of the setup (cache, split, run folder, model, data, class counts, optimizer) comes
    before the first file is written to the run folder (``RunDir.start``)."""
    env = setup(cfg.device)
    events: EventSink | None = None
    task: Task | None = None
    finished = False  # every step of the run done (the ranks then meet before leaving the group)
    lock = RunLock(cfg.out) if cfg.out is not None and env.main else None
    try:
        precision = resolve_precision(cfg.precision, env.device)
        cache = open_cache(cfg.cache)
        train_idx, val_idx = case_split(cfg, cache.cases)
        split = {"train": [cache.cases[i] for i in train_idx], "val": [cache.cases[i] for i in val_idx]}
        trained_on = cache_identity(cache)
        run = _check_run_dir(cfg, resume, env, split, trained_on, lock)
        events = event_sink(cfg, env, run)
        ctx = Context(
            cfg=cfg,
            env=env,
            precision=precision,
            cache=cache,
            run=run,
            train_idx=train_idx,
            val_idx=val_idx,
            resume=resume,
            events=events,
        )
        torch.manual_seed(cfg.seed)  # the model's initial weights: identical on every rank
        task = build(ctx)
        compile_model(task, cfg)
        optimizer = build_optimizer(task.model, cfg.lr, cfg.weight_decay, cfg.betas, lr_scales=task.lr_scales)
        scaler = make_scaler(precision)
        run.start(cfg, resume, split, trained_on)
        events.emit("start", resume=resume)
        events.emit(
            "setup",
            stage=task.stage,
            world=env.world,
            device=str(env.device),
            precision=precision,
            train_cases=len(train_idx),
            val_cases=len(val_idx),
            train_case_names=split["train"],
            val_case_names=split["val"],
            steps_per_epoch=len(task.loader),
            crops_per_step=cfg.batch_size * cfg.num_samples * env.world,
            compile=cfg.compile,
            model=task.model.config.model_dump(mode="json"),
            parameters=sum(p.numel() for p in task.model.parameters()),
            trainable_parameters=sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
            lr_groups=[
                {
                    "lr_scale": g.get("lr_scale", 1.0),
                    "weight_decay": g["weight_decay"],
                    "tensors": len(g["params"]),
                }
                for g in optimizer.param_groups
            ],
            **({"class_weights": task.extra["class_weights"]} if task.extra.get("class_weights") else {}),
        )
        result = fit(task, optimizer, scaler, cfg, env, run, precision, resume=resume, events=events)
        events.emit("end", epochs=result.epochs, steps=result.steps, best=result.best)
        finished = True
        return RunResult(out=run.root, fit=result, model=task.model, env=env)
    finally:
        if task is not None:
            close_loader(task.loader)  # its workers end with the run (an error too)
        try:
            if events is not None:
                events.close()
        finally:
            try:
                if lock is not None:
                    lock.release()
            finally:
                teardown(env, finished)


def case_split(cfg: TrainConfig, names: list[str]) -> tuple[list[int], list[int]]:
    """(train, validation) indices into the cache's case ``names`` for ``cfg``: the seeded split
    (:func:`~hiend_train.data.few_shot_split`; fine-tuning adds k-fold and ``train_cases``)."""
    return few_shot_split(
        names,
        cfg.val_fraction,
        cfg.seed,
        train_cases=getattr(cfg, "train_cases", None),
        fold=getattr(cfg, "fold", None),
        folds=getattr(cfg, "folds", None),
    )


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when several processes run, else ``model``."""
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
