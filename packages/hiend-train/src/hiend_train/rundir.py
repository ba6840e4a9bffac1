"""The run folder: what a run writes, and how ``--resume`` finds it again.

::

    RUN/config.json         the resolved config (every field, defaults included), ``split`` and
                            ``trained_on`` (the cache: its path, plan digest and case names' digest)
    RUN/split.json          the case names trained on and validated on (and what chose them)
    RUN/log.jsonl           one JSON object per line: {"event": "step" | "epoch" | "val" | ..., ...}
    RUN/last.safetensors    model weights (hiend checkpoint with the cache's plan), after each save
    RUN/best.safetensors    fine-tuning: the weights with the best validation Dice so far
    RUN/best_probe.safetensors  pre-training with ``probe``: the weights with the best probe score so
                            far (its step in log.jsonl's ``probe`` events, :mod:`hiend_train.probing`)
    RUN/state.pt            training state: optimizer, grad scaler, epoch, batch, step, RNG states, best score
    RUN/state_NNNNNNNN.pt   a save in progress (step N): written first, renamed to state.pt last
    RUN/checkpoints/        periodic checkpoints (``save_every_steps`` / ``save_every_minutes``):
                            step_NNNNNNNN.safetensors + step_NNNNNNNN.pt, the newest ``keep_last``
    RUN/previews/           pre-training reconstructions (PNG, with the ``preview`` extra)
    RUN/tb/                 TensorBoard event files (``tensorboard = true``)
    RUN/.lock               while a run is going: its PID (:class:`RunLock`; removed when it ends)

Every file is written under a temporary name in ``RUN``, fsync-ed and renamed (:mod:`hiend_data.atomic`).
A checkpoint is two files (the weights and state.pt), saved in three atomic steps so that a save
stopped anywhere leaves a pair that agrees; that protocol, keep-last and what ``--resume`` takes are
:mod:`hiend_train.checkpointing`'s. This module keeps the folder: its paths (:class:`RunDir`), the
lock that keeps one run per folder (:class:`RunLock`), and the checks before a run writes
(:meth:`RunDir.check`, :meth:`RunDir.check_outputs`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, ClassVar

from hiend_data.atomic import write_text
from hiend_data.errors import InputError

from .config import RUNTIME_FIELDS, TrainConfig, current_keys
from .events import JsonlSink
from .outputs import writing
from .task import STAGES

try:
    import fcntl
except ImportError:  # pragma: no cover - no POSIX locks on this platform
    fcntl = None  # type: ignore[assignment]

#: the lock file of a run folder (:class:`RunLock`)
LOCK_NAME = ".lock"


class RunLock:
    """One run at a time in a run folder: taken before the folder is checked, held until the run ends.

    Two runs writing one ``RUN`` would each truncate log.jsonl and replace the other's checkpoints, so
    the second is refused at once: an InputError naming the folder and the holder's PID (exit 2). The
    lock is a POSIX record lock (``fcntl.lockf``) on ``RUN/.lock``, which holds the holder's PID. Such a
    lock belongs to the process: it ends with it (a crash or ``kill -9`` leaves no lock behind, only
    the file, which the next run takes over), and forked children (DataLoader workers) do not inherit
    it, so a worker that outlives its run for a moment does not block the next one. :meth:`release`
    removes the file (while still holding the lock; a run that opened the old file meanwhile sees that
    it is gone and tries again) and the folders :meth:`acquire` created when they are still empty (a run
    refused during setup leaves nothing behind). Under DDP rank 0, the rank that writes RUN, takes it.
    POSIX locks do not exclude the process that holds them (and closing any descriptor of the file
    would drop them), so the folders this process holds are also kept in :attr:`held`: a second run in
    the same process (two threads of a Python program) is refused the same way.
    """

    #: the run folders this process holds, by (device, inode), with their lock's folder
    held: ClassVar[dict[tuple[int, int], Path]] = {}
    _held_guard = threading.Lock()

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.fd: int | None = None
        self.key: tuple[int, int] | None = None
        #: folders made by :meth:`acquire`, deepest first (removed by :meth:`release` while empty)
        self.created: list[Path] = []

    def acquire(self) -> RunLock:
        """Create RUN if needed and lock it; InputError when another living process holds the lock."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: exists and is not a folder")
        missing = []
        for folder in (self.root, *self.root.parents):
            if folder.exists():
                break
            missing.append(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        self.created = missing
        info = self.root.stat()
        with self._held_guard:
            if (info.st_dev, info.st_ino) in self.held:
                self.created = []
                raise InputError(self._busy(f"pid {os.getpid()}, this process"))
            self.key = (info.st_dev, info.st_ino)
            self.held[self.key] = self.root
        try:
            self._lock()
        except BaseException:
            self.release()
            raise
        return self

    def _busy(self, holder: str) -> str:
        return (
            f"{self.root}: another hiend-train run ({holder}) is using this run folder; "
            "wait for it to end or choose another --out"
        )

    def _lock(self) -> None:
        """Take the POSIX lock on RUN/.lock (retrying while a releasing holder removes the file)."""
        if fcntl is None:  # pragma: no cover
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "PID not known yet"
                os.close(fd)
                self.created = []  # the folder is the other run's now
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise InputError(self._busy(holder)) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file while this one waited: lock the new one
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())

    def release(self) -> None:
        """Remove RUN/.lock and unlock; remove the folders :meth:`acquire` made if nothing was written."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
        if self.key is not None:
            with self._held_guard:
                self.held.pop(self.key, None)
            self.key = None
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote there
                break
        self.created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_run_text(path: Path, text: str) -> None:
    """Write a run file: :func:`hiend_data.atomic.write_text` (atomic, UTF-8) with a failure named by
    :func:`hiend_train.outputs.writing` (one line naming ``path``)."""
    with writing(path):
        write_text(path, text)


#: entries of config.json that are not config fields: what the run resolved from them (the case split,
#: the cache it was trained on)
RESOLVED_KEYS = ("split", "trained_on")


def cache_identity(cache: Any) -> dict[str, Any]:
    """What a run records of the cache it trains on (config.json's ``trained_on``) and ``--resume``
    compares: its path (for messages only: a moved cache is the same cache), the plan's digest and
    the number and digest (sha256 of the sorted names, one a line) of its case names."""
    names = sorted(cache.cases)
    return {
        "cache": str(cache.root),
        "plan_digest": cache.plan.digest(),
        "cases": len(names),
        "cases_digest": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }


def _cache_text(identity: dict[str, Any]) -> str:
    return (
        f"{identity.get('cache')} (plan {str(identity.get('plan_digest'))[:12]}, "
        f"{identity.get('cases')} cases)"
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def _defaults(cls: type[TrainConfig]) -> dict[str, Any]:
    from pydantic_core import to_jsonable_python

    return {
        k: to_jsonable_python(f.get_default(call_default_factory=True)) for k, f in cls.model_fields.items()
    }


class RunDir:
    """``RUN``: checks before a run starts, then the files it writes (only rank 0 writes)."""

    def __init__(self, root: str | os.PathLike[str], writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer
        self.config_path = self.root / "config.json"
        self.split_path = self.root / "split.json"
        self.log_path = self.root / "log.jsonl"
        self.last = self.root / "last.safetensors"
        self.best = self.root / "best.safetensors"
        self.best_probe = self.root / "best_probe.safetensors"
        self.state_path = self.root / "state.pt"
        self.previews = self.root / "previews"
        self.checkpoints = self.root / "checkpoints"
        self.tb = self.root / "tb"
        #: log.jsonl as an event sink (writes only on the writer rank); the loop gets it through
        #: :func:`hiend_train.runner.event_sink`
        self.events = JsonlSink(self.log_path, enabled=writer)

    def _saved(self) -> dict[str, Any] | None:
        if not self.config_path.is_file():
            return None
        try:
            data = json.loads(self.config_path.read_text())
        except ValueError as exc:
            raise InputError(f"{self.config_path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{self.config_path}: expected a JSON object")
        return data

    def saved_config(self) -> dict[str, Any] | None:
        """The config fields in the config.json of an earlier run in this folder (without ``split``), or
        None; a run saved before ``stage`` was named so has ``kind`` (:func:`~hiend_train.config.current_keys`)."""
        data = self._saved()
        return (
            None if data is None else current_keys({k: v for k, v in data.items() if k not in RESOLVED_KEYS})
        )

    def saved_split(self) -> dict[str, list[str]] | None:
        """``{"train": [case names], "val": [case names]}`` of config.json (None: none, or an older run)."""
        data = self._saved()
        split = None if data is None else data.get("split")
        return split if isinstance(split, dict) else None

    def saved_trained_on(self) -> dict[str, Any] | None:
        """config.json's ``trained_on`` (:func:`cache_identity`; None: none, or an older run)."""
        data = self._saved()
        found = None if data is None else data.get("trained_on")
        return found if isinstance(found, dict) else None

    def has_checkpoint(self) -> bool:
        """Has a run here saved anything to resume from: last.safetensors, state.pt or a periodic
        checkpoint? (A staged ``state_N.pt`` without weights, best.safetensors, previews and TensorBoard
        files alone do not count: a run stopped before its first save.)"""
        return self.last.exists() or self.state_path.exists() or bool(self.periodic())

    def _never_saved(self, saved: dict[str, Any] | None) -> bool:
        """config.json of a hiend run that stopped before its first checkpoint (killed or failed after
        setup): a fresh start may reuse the folder."""
        return (
            saved is not None
            and saved.get("stage") in STAGES
            and self.log_path.is_file()
            and not self.has_checkpoint()
        )

    def check_outputs(self, cfg: TrainConfig) -> None:
        """InputError unless every place the run writes can take what goes there, checked before
        anything is written (a run must not train an epoch and then fail on its first save): RUN and
        its folders (checkpoints/, previews/, and tb/ with ``tensorboard``) are folders or absent and,
        where present, writable; its files (config.json, log.jsonl, the checkpoints) are files or
        absent."""
        folders = {self.root: "the run", self.checkpoints: "periodic checkpoints", self.previews: "previews"}
        if cfg.tensorboard:
            folders[self.tb] = "its TensorBoard event files"
        for folder, what in folders.items():
            if folder.exists() and not folder.is_dir():
                raise InputError(f"{folder}: exists and is not a folder (the run writes {what} there)")
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"{folder}: not writable (the run writes {what} there)")
        files = (self.config_path, self.split_path, self.log_path, self.last, self.best, self.best_probe)
        files += (self.state_path,)
        for path in files:
            if path.exists() and not path.is_file():
                raise InputError(f"{path}: exists and is not a file (the run writes it)")

    def check(
        self,
        cfg: TrainConfig,
        resume: bool,
        split: dict[str, list[str]] | None = None,
        trained_on: dict[str, Any] | None = None,
    ) -> None:
        """InputError unless ``cfg`` may run here: a fresh run needs a folder without an earlier run (or
        one whose run never saved a checkpoint: it is started again from scratch); ``resume`` needs one
        with a checkpoint whose config computes the same thing (runtime fields such as workers or
        stop_after may differ), given ``trained_on`` (:func:`cache_identity`), a cache with the same
        plan and case names, and, given ``split``, the same training and validation cases."""
        self.check_outputs(cfg)
        saved = self.saved_config()
        if saved is not None:  # a field newer than the run: the run had its default
            saved = {**_defaults(type(cfg)), **saved}
        if resume:
            if saved is None or not self.has_checkpoint():
                why = (
                    "the run there stopped before its first checkpoint; start it again without --resume"
                    if self._never_saved(saved)
                    else "no config.json and state.pt; start without --resume"
                )
                raise InputError(f"{self.root}: nothing to resume ({why})")
            old = {k: v for k, v in saved.items() if k not in RUNTIME_FIELDS}
            diff = _differences(old, cfg.identity())
            if diff:
                raise InputError(
                    f"{self.root}: --resume with a different config ({', '.join(diff)} changed); "
                    "resume with the run's own config or start a new --out"
                )
            was = self.saved_trained_on()
            if trained_on is not None and was is not None:
                changed = [
                    what
                    for what, key in (("plan", "plan_digest"), ("case names", "cases_digest"))
                    if was.get(key) != trained_on.get(key)
                ]
                if changed:
                    raise InputError(
                        f"{self.root}: --resume on another cache: {_cache_text(trained_on)} is not "
                        f"{_cache_text(was)}, which the run was trained on ({' and '.join(changed)} "
                        "differ); resume with the run's cache (it may have moved)"
                    )
            before = self.saved_split()
            if split is not None and before is not None:
                changed = [k for k in ("train", "val") if sorted(before.get(k, [])) != sorted(split[k])]
                if changed:
                    raise InputError(
                        f"{self.root}: --resume on other cases (the cache gives {len(split['train'])} "
                        f"train / {len(split['val'])} val cases, the run had "
                        f"{len(before.get('train', []))} / {len(before.get('val', []))}; "
                        f"{' and '.join(changed)} differ); resume with the run's cache"
                    )
            return
        if saved is not None and not self._never_saved(saved):
            diff = _differences(saved, cfg.model_dump(mode="json"))
            what = f"a different config ({', '.join(diff)} differ)" if diff else "the same config"
            raise InputError(
                f"{self.root}: already holds a run with {what}; pass --resume to continue it "
                "or choose another --out (nothing is overwritten)"
            )

    def start(
        self,
        cfg: TrainConfig,
        resume: bool,
        split: dict[str, list[str]] | None = None,
        trained_on: dict[str, Any] | None = None,
    ) -> None:
        """Create the folder, write config.json (with ``split`` and ``trained_on``) and split.json (fresh
        runs) and start (empty) or continue log.jsonl. A fresh run in the folder of a run that never
        saved a checkpoint (:meth:`check` allows it) first removes what that run left: its staged state,
        best.safetensors, best_probe.safetensors, previews and TensorBoard files. The ``start`` event is the caller's to emit
        (:func:`hiend_train.runner.execute`), through its sinks."""
        if not self.writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if not resume:
            if self._never_saved(self.saved_config()):
                for path in (self.best, self.best_probe, *self.staged_states()):
                    path.unlink(missing_ok=True)
                for folder in (self.previews, self.tb, self.checkpoints):
                    if folder.is_dir():
                        shutil.rmtree(folder)
            fields = cfg.model_dump(mode="json")
            record = fields if split is None else {**fields, "split": split}
            if trained_on is not None:
                record["trained_on"] = trained_on
            write_run_text(self.config_path, json.dumps(record, indent=2) + "\n")
            if split is not None:
                how = {
                    k: fields[k]
                    for k in ("seed", "val_fraction", "fold", "folds", "train_cases")
                    if k in fields
                }
                write_run_text(self.split_path, json.dumps({**how, **split}, indent=2) + "\n")
            write_run_text(self.log_path, "")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record ``{"event": ..., **fields}`` to log.jsonl only (with a UTC time stamp).

        For code that holds only the run folder; the loop emits through its sinks
        (:mod:`hiend_train.events`), which reach log.jsonl and any sink added later."""
        self.events.emit(**record)

    def read_log(self) -> list[dict[str, Any]]:
        """Every record of log.jsonl."""
        return [json.loads(x) for x in self.log_path.read_text().splitlines() if x.strip()]

    # -- where checkpoints go (what goes there: hiend_train.checkpointing) ----------------------------
    def staged_state_path(self, step: int) -> Path:
        """Where the state of a save at optimizer step ``step`` is staged before it becomes state.pt."""
        return self.root / f"state_{step:08d}.pt"

    def staged_states(self) -> list[Path]:
        """Staged states left by saves that did not finish (``state_NNNNNNNN.pt``), newest step first."""
        found = [p for p in self.root.glob("state_*.pt") if _STAGED.fullmatch(p.name)]
        return sorted(found, reverse=True)

    def periodic(self) -> list[tuple[int, Path, Path]]:
        """The periodic checkpoints in RUN/checkpoints as (step, weights, state), oldest first (a step
        counts once both of its files are there)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for path in self.checkpoints.glob("step_*.safetensors"):
            match = _PERIODIC.fullmatch(path.name)
            state = path.with_suffix(".pt")
            if match and state.is_file():
                found.append((int(match.group(1)), path, state))
        return sorted(found)

    def periodic_paths(self, step: int) -> tuple[Path, Path]:
        """The weights and state of the periodic checkpoint of optimizer step ``step``."""
        name = f"step_{step:08d}"
        return self.checkpoints / f"{name}.safetensors", self.checkpoints / f"{name}.pt"


_PERIODIC = re.compile(r"step_(\d+)\.safetensors")
_STAGED = re.compile(r"state_(\d+)\.pt")
