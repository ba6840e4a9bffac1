"""One writer per cache, and it takes its workers with it: the writer lock (``OUT/.lock``), SIGTERM
as :class:`Terminated`, and the worker processes that die with the writer (see :mod:`hiend_data.cache`,
"One writer")."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

from ..discovery import Case
from ..errors import InputError, shown
from ..plan import Plan
from .process import process_case

try:  # POSIX; elsewhere (Windows) a cache has no writer lock
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]


class Terminated(SystemExit):
    """SIGTERM arrived while :func:`preprocess_dataset` was writing: workers stopped, temporary files
    removed. A ``SystemExit`` whose code is 143 (128 + SIGTERM), so that a program that does not catch
    it ends as a terminated process would."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread (so that the
    cleanup of ``finally`` blocks and :mod:`hiend_data.atomic` runs); the previous handler comes back
    afterwards. A no-op outside the main thread (signals cannot be handled there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


LOCK_NAME = ".lock"


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[int]:
    """An exclusive ``flock`` on ``out/.lock`` while a preprocess writes the cache; yields the lock's
    file descriptor (-1 where there is no flock). InputError naming the cache if another process holds
    it (two writers would delete each other's temporary files and interleave a case's arrays).

    The lock goes with the process (crash or kill -9 included): a flock lasts while any descriptor of
    it is open, and forked children inherit descriptors, so the worker processes close theirs at
    their start (:func:`_worker_init`) and die with the writer."""
    if fcntl is None:  # pragma: no cover - no flock on this platform
        yield -1
        return
    path = out / LOCK_NAME
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole block (close-on-exec, as Python opens files)
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = shown(fh.read(200).strip()) or "another process"
            pid = holder.removeprefix("pid ")
            gone = pid.isdigit() and not _alive(int(pid))
            note = "; that process has exited, but one it started still holds the lock" if gone else ""
            raise InputError(
                f"{out}: another preprocess is writing this cache ({holder}){note}; wait for it or use "
                "another folder"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
        except OSError as exc:  # a full disk: name the file
            exc.filename = exc.filename or str(path)
            raise
        yield fh.fileno()
    finally:
        fh.close()


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists (and is not a zombie, where /proc says so)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _worker_init(lock_fd: int, lock_ino: int, parent: int) -> None:
    """Start of a worker process: close the inherited descriptor of the writer lock (checked to be it),
    take back SIGTERM's default action, and die with the writer: Linux's ``PR_SET_PDEATHSIG`` sends
    SIGKILL when the parent goes, and a parent already gone (the race before the call) ends it now."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if lock_fd >= 0:
        with contextlib.suppress(OSError):
            if os.fstat(lock_fd).st_ino == lock_ino:
                os.close(lock_fd)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent:
        os._exit(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's worker processes and wait for them (a few seconds at most)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(5)


def _run(
    todo: list[Case],
    out: Path,
    plan: Plan,
    workers: int,
    max_indices: int,
    progress: bool,
    skipped: int,
    skip_bad: bool,
    lock_fd: int = -1,
) -> list[str]:
    """Process ``todo``; returns the messages of the bad cases skipped (``skip_bad``), else raises.

    With worker processes: each closes its copy of ``lock_fd`` and dies with this process
    (:func:`_worker_init`); a ``BaseException`` that is not an ``Exception`` here (SIGTERM's
    :class:`Terminated`, Ctrl-C) kills them at once, a bad case lets the running ones finish."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("preprocess"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn(f"({skipped} up to date)" if skipped else ""),
    )
    bad: list[str] = []
    if workers <= 0:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("preprocess", total=len(todo))
            for case in todo:
                try:
                    process_case(case, out, plan, max_indices)
                except (InputError, FileNotFoundError) as exc:
                    if not skip_bad:
                        raise
                    bad.append(str(exc))
                bar.advance(task)
        return bad
    import multiprocessing

    # fork: no re-import of the caller's __main__; the workers start at the first submit, before the
    # progress bar's refresh thread exists.
    ctx = multiprocessing.get_context("fork")
    lock_ino = os.fstat(lock_fd).st_ino if lock_fd >= 0 else -1
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(lock_fd, lock_ino, os.getpid()),
    )
    try:
        pending = {pool.submit(process_case, c, out, plan, max_indices) for c in todo}
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("preprocess", total=len(todo))
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    exc = fut.exception()
                    if isinstance(exc, InputError | FileNotFoundError) and skip_bad:
                        bad.append(str(exc))
                    elif exc is not None:
                        raise exc
                    bar.advance(task)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return bad
