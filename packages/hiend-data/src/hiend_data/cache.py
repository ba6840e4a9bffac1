"""The preprocessed cache: every case of a dataset run through a :class:`Plan`, ready to sample from.

Layout of a cache folder ``OUT``::

    OUT/plan.json                  the Plan (its digest marks which cases are current)
    OUT/labels.json                label value -> name, ``{"labels": {"1": "liver", ...}}`` (only when
                                   the names are known: from the dataset.json or given; not part of
                                   the plan, so it never invalidates cases)
    OUT/cases/{case}.npy           image [C, X, Y, Z] as the plan's cache dtype (uint8 / int16 codes,
                                   float16 or float32 values), C-contiguous (memory-mapped on read)
    OUT/cases/{case}_seg.npy       label [X, Y, Z] (uint8/uint16/int32), labelled cases only
    OUT/cases/{case}_fg.npy        int64 flat indices into X*Y*Z of foreground voxels (sorted)
    OUT/cases/{case}_cls.npy       int64 flat indices grouped by class (offsets in the metadata)
    OUT/cases/{case}.json          metadata: PreprocessRecord, plan digest, classes, sources

Each file is written with :mod:`hiend_data.atomic` (a temporary ``.{name}.{random}.tmp{suffix}`` in
the same folder, fsync-ed, renamed into place, the folder fsync-ed); the metadata file is written last,
so a case exists only once all of its arrays do. An interrupted run leaves complete cases and
(ignored, removed by the next run) temporary files. Re-running skips cases whose metadata carries the
current plan's digest, its cache dtype and the same source files (size and modification time); others
are recomputed.

The image's storage (:mod:`hiend_data.storage`): ``Plan.resolved_cache_dtype`` (CT: uint8 codes by
default, ``value = code * image_scale``), recorded per case as ``image_dtype`` and ``image_scale`` in
its metadata. Metadata ``format`` 1 is a float32 image (caches written before compact dtypes, which
have neither field); ``format`` 2 any dtype, so that readers that only know format 1 skip those cases
instead of reading codes as values. :attr:`CachedCase.image` is always float32 values;
:attr:`CachedCase.stored` and :attr:`CachedCase.image_scale` are what the sampler reads.

**Reading trusts nothing** (:meth:`Cache.open`): every case metadata file made under the cache's plan is
checked before any array is mapped: valid JSON, every field of the right type (:class:`CaseMeta`), a
``case_id`` that is a safe name (:func:`hiend_data.naming.safe_case_name`) equal to the file's own
name, ``image_dtype`` / ``image_scale`` the pair :mod:`hiend_data.storage` writes, and each ``.npy``
file's header (read alone) holding the dtype and shape the metadata claims, inside the cache. A file
that fails is one InputError line naming it and the field.

**One writer, and it takes its workers with it** (:func:`preprocess_dataset`): an exclusive ``flock``
on ``OUT/.lock`` that the worker processes close at their start (so the lock goes when the writer
goes, crash or ``kill -9`` included); the workers die with the writer (Linux: ``PR_SET_PDEATHSIG``);
SIGTERM stops the workers, removes the temporary files and raises :class:`Terminated` (exit code 143).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import signal
import stat
import sys
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from .atomic import atomic_open, check_output_path, write_bytes
from .discovery import Case, discover
from .errors import InputError, from_validation_error, shown
from .io import check_oriented, load_label, load_volume
from .jsonfile import read_json
from .labels import LabelNameError, label_names_from_dataset, label_names_from_json, label_names_to_json
from .naming import path_inside, safe_case_name
from .plan import Plan
from .preprocess import PreprocessRecord, preprocess_case
from .storage import NUMPY_DTYPES, decode, encode, step

try:  # POSIX; elsewhere (Windows) a cache has no writer lock
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

#: Metadata format written for compact images (format 1, a float32 image, is still written for float32)
FORMAT = 2
#: Metadata formats this version reads.
READ_FORMATS = (1, 2)
MAX_INDICES = 200_000  # per index list; larger lists are a uniform random subsample (sorted)
#: Temporary files a crash can leave in ``OUT/cases``: :mod:`hiend_data.atomic`'s
#: ``.{name}.{random}.tmp{suffix}``, and ``.{name}.tmp-{pid}`` from caches written before it.
TEMP_GLOBS = (".*.tmp", ".*.tmp.*", ".*.tmp-*")
#: the cache's label names (:mod:`hiend_data.labels`), beside plan.json
LABELS_NAME = "labels.json"


# ------------------------------------------------------------------------------------------ writing


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as a C-contiguous ``.npy`` file (memory-mappable), written atomically and durably."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def _sources(case: Case) -> list[dict[str, Any]]:
    out = []
    for f in [*case.images, *([case.label] if case.label else [])]:
        f = Path(f)
        if f.is_dir():  # a DICOM series folder: its files' total size and newest change
            stats = [p.stat() for p in f.rglob("*") if p.is_file()]
            size = sum(st.st_size for st in stats)
            mtime = max((st.st_mtime_ns for st in stats), default=f.stat().st_mtime_ns)
            out.append({"path": str(f.resolve()), "size": size, "mtime_ns": mtime, "files": len(stats)})
            continue
        st = f.stat()
        out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _subsample(indices: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if len(indices) <= cap:
        return indices.astype(np.int64, copy=False)
    keep = np.random.default_rng(seed).choice(len(indices), size=cap, replace=False)
    keep.sort()
    return indices[keep].astype(np.int64, copy=False)


def _class_lists(
    label: np.ndarray, cap: int, seed: int
) -> tuple[list[int], list[int], list[int], np.ndarray]:
    """(classes > 0, true voxel counts, offsets into the concatenated indices, concatenated indices)."""
    flat = label.reshape(-1)
    counts = np.bincount(flat.astype(np.int64, copy=False)) if flat.size else np.zeros(1, np.int64)
    classes = [int(v) for v in np.flatnonzero(counts) if v > 0]
    if not classes:
        return [], [], [0], np.zeros(0, np.int64)
    order = np.argsort(flat, kind="stable")  # indices grouped by value, ascending within a value
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = [_subsample(order[starts[v] : starts[v + 1]], cap, seed + v) for v in classes]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).tolist()
    return classes, [int(counts[v]) for v in classes], [int(o) for o in offsets], np.concatenate(parts)


def _case_seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def process_case(case: Case, out: str | os.PathLike[str], plan: Plan, max_indices: int = MAX_INDICES) -> str:
    """Preprocess one case into the cache folder ``out`` (arrays first, metadata last). Returns its id."""
    folder = Path(out) / "cases"
    # every file of the case: a checked name that stays inside the cache (hiend_data.naming)
    meta_path = path_inside(folder, case.case_id, ".json")
    if meta_path.exists():
        meta_path.unlink()  # from here on the case is incomplete until the new metadata lands
    image = load_volume(case.images, series=case.series or None)
    check_oriented(image)
    label = load_label(case.label, like=image) if case.label is not None else None
    pre = preprocess_case(image, plan, label)
    del image, label
    seed = _case_seed(case.case_id)
    dtype = plan.resolved_cache_dtype
    stored, scale = encode(pre.image, dtype, name=case.case_id)
    _atomic_npy(path_inside(folder, case.case_id, ".npy"), stored)
    del stored
    meta: dict[str, Any] = {
        "format": 1 if dtype == "float32" else FORMAT,
        "case_id": case.case_id,
        "plan_digest": plan.digest(),
        "image_dtype": dtype,
        "image_scale": scale,
        "shape": list(pre.record.shape),
        "channels": int(pre.image.shape[0]),
        "labelled": pre.label is not None,
        "sources": _sources(case),
    }
    if pre.label is not None:
        _atomic_npy(path_inside(folder, case.case_id, "_seg.npy"), pre.label)
        fg = np.flatnonzero(pre.label.reshape(-1) > 0)
        classes, counts, offsets, cls_idx = _class_lists(pre.label, max_indices, seed)
        _atomic_npy(path_inside(folder, case.case_id, "_cls.npy"), cls_idx)
        meta.update(
            classes=classes, class_counts=counts, class_offsets=offsets, label_dtype=str(pre.label.dtype)
        )
    else:
        fg = np.flatnonzero(pre.image[0].reshape(-1) > 0)  # the same voxels as stored codes > 0
        meta.update(classes=[], class_counts=[], class_offsets=[0], label_dtype=None)
    meta.update(n_foreground=int(fg.size))
    _atomic_npy(path_inside(folder, case.case_id, "_fg.npy"), _subsample(fg, max_indices, seed))
    meta["record"] = pre.record.model_dump(mode="json")
    write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return case.case_id


def _is_current(case: Case, folder: Path, digest: str, dtype: str) -> bool:
    meta_path = folder / f"{case.case_id}.json"
    if not meta_path.exists():
        return False
    try:
        meta = read_json(meta_path, expect=dict)
    except (InputError, OSError):
        return False  # unreadable: recomputed
    return (
        meta.get("format") in READ_FORMATS
        and meta.get("plan_digest") == digest
        and meta.get("image_dtype", "float32") == dtype
        and meta.get("sources") == _sources(case)
    )


def _clean_temporaries(folder: Path) -> None:
    """Remove what interrupted writes left in ``folder`` (:data:`TEMP_GLOBS`)."""
    for f in {f for pattern in TEMP_GLOBS for f in folder.glob(pattern)}:
        try:
            f.unlink()
        except OSError:
            pass


def _dataset_label_names(src: Path) -> dict[int, str] | None:
    """The label names of the dataset folder ``src`` from its dataset.json, or None: no dataset.json,
    or one without a ``labels`` map (nothing said), or one whose labels cannot be names (region-based,
    only background, ...: a warning on stderr, the cache gets no names; preprocessing needs none).
    A name that is empty, only blanks or holds control characters is refused (:class:`LabelNameError`
    naming the dataset.json and the label): the file is wrong, not merely unusual."""
    djson = src / "dataset.json"
    if not src.is_dir() or not djson.is_file():
        return None
    try:
        data = read_json(djson)
    except InputError:
        return None  # discovery reports it
    if not isinstance(data, dict) or not data.get("labels"):
        return None
    try:
        return label_names_from_dataset(data, djson)
    except LabelNameError:
        raise
    except InputError as exc:
        print(f"warning: {shown(exc)}; the cache gets no label names", file=sys.stderr)
        return None


def _checked_label_names(labels: dict[int, str]) -> dict[int, str]:
    """``labels`` (background 0 dropped) in the stored form's rules (InputError otherwise)."""
    if not isinstance(labels, dict):
        raise InputError(f"labels: expected a dict of label value -> name, got {type(labels).__name__}")
    bad = [v for v in labels if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise InputError(f"labels: label value {bad[0]!r} is not an integer >= 0")
    names = {v: n for v, n in labels.items() if v != 0}
    if not names:
        raise InputError("labels: only background (0) is named; no structure is")
    return label_names_from_json({str(v): n for v, n in names.items()}, "labels")


def write_label_names(out: str | os.PathLike[str], names: dict[int, str]) -> Path:
    """``out/labels.json`` (``{"labels": {"1": "liver", ...}}``), written atomically. Returns its path."""
    path = Path(out) / LABELS_NAME
    text = json.dumps({"labels": label_names_to_json(names)}, indent=1) + "\n"
    write_bytes(path, text.encode())
    return path


def read_cache_label_names(root: str | os.PathLike[str]) -> dict[int, str] | None:
    """The label names of the cache ``root`` (its labels.json), None when it has none; InputError
    naming the file when it is not ``{"labels": {"1": "name", ...}}``."""
    path = Path(root) / LABELS_NAME
    if not path.is_file():
        return None
    data = read_json(path, expect=dict)
    return label_names_from_json(data.get("labels"), str(path))


def preprocess_dataset(
    src: str | os.PathLike[str] | Sequence[Case],
    out: str | os.PathLike[str],
    plan: Plan | None = None,
    workers: int = 1,
    *,
    include_test: bool = False,
    max_indices: int = MAX_INDICES,
    progress: bool = True,
    skip_bad: bool = False,
    series: Sequence[str] = (),
    labels: dict[int, str] | None = None,
) -> Cache:
    """Preprocess every case of ``src`` into the cache folder ``out`` and return the opened :class:`Cache`.

    ``src`` is anything :func:`~hiend_data.discovery.discover` reads (nnU-Net v2 folder, folder of NIfTI,
    manifest) or a list of :class:`Case`. ``workers`` processes work in parallel (0 = in this process).
    Cases already done under the same plan (digest and cache dtype) are skipped; a changed
    ``plan.cache_dtype`` rewrites every case. The first bad case stops the run with its
    :class:`InputError` (cases finished before it stay valid); with ``skip_bad=True`` bad cases are
    reported on stderr, left out, and the run goes on (for large unlabelled pools). ``series``: the
    SeriesInstanceUIDs to read from DICOM folders holding several series (each such folder must hold
    exactly one of them).

    ``labels``: label value -> name (:mod:`hiend_data.labels`); None: from ``src``'s dataset.json when
    ``src`` is a dataset folder whose dataset.json has a usable ``labels`` map. Known names are written
    to ``out/labels.json`` (:attr:`Cache.label_names`); a run that knows none leaves an earlier
    labels.json as it is.

    SIGTERM (in the main thread) stops the workers, removes the temporary files and raises
    :class:`Terminated` (a ``SystemExit`` with code 143); finished cases stay valid. ``out`` below a
    symbolic-link loop is an InputError naming it.
    """
    plan = plan or Plan()
    names = _checked_label_names(labels) if labels is not None else None
    cases = discover(src, include_test=include_test) if isinstance(src, str | os.PathLike) else list(src)
    if names is None and isinstance(src, str | os.PathLike):
        names = _dataset_label_names(Path(src))
    if series:
        cases = [dataclasses.replace(c, series=tuple(series)) for c in cases]
    out = check_output_path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    folder = out / "cases"
    folder.mkdir(parents=True, exist_ok=True)
    # one writer per cache: a second preprocess is refused, not interleaved
    with _writer_lock(out) as lock_fd, _sigterm_raises():
        try:
            _clean_temporaries(folder)
            plan_text = json.dumps(plan.model_dump(mode="json"), indent=1) + "\n"
            write_bytes(out / "plan.json", plan_text.encode())
            if names:
                write_label_names(out, names)
            digest = plan.digest()
            dtype = plan.resolved_cache_dtype
            todo = [c for c in cases if not _is_current(c, folder, digest, dtype)]
            if todo:
                skipped = len(cases) - len(todo)
                bad = _run(todo, out, plan, workers, max_indices, progress, skipped, skip_bad, lock_fd)
                for msg in bad:
                    print(f"warning: skipped {shown(msg)}", file=sys.stderr)
        except Terminated:
            _clean_temporaries(folder)  # the workers are gone: what they were writing goes too
            raise
    return Cache.open(out)


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


# ------------------------------------------------------------------------------------------ reading

_NonNegInt = Annotated[StrictInt, Field(ge=0)]


class CaseMeta(BaseModel):
    """The fields of a case's metadata file that reading relies on, each of its type (other fields,
    such as ``sources``, are kept and not checked). ``image_dtype`` / ``image_scale`` may be absent only
    in format 1 (a float32 image)."""

    model_config = ConfigDict(extra="allow")

    format: StrictInt
    case_id: StrictStr
    plan_digest: StrictStr
    image_dtype: StrictStr | None = None
    image_scale: StrictFloat | None = None
    shape: tuple[_NonNegInt, _NonNegInt, _NonNegInt]
    channels: Annotated[StrictInt, Field(ge=1)]
    labelled: StrictBool
    classes: list[Annotated[StrictInt, Field(ge=1)]]
    class_counts: list[_NonNegInt]
    class_offsets: list[_NonNegInt]
    label_dtype: StrictStr | None
    n_foreground: _NonNegInt
    record: PreprocessRecord


def _npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran_order) of the ``.npy`` file ``path``, from its header alone; InputError
    naming it when the file does not hold the bytes its header claims (cut short, or a header claiming a
    huge shape: memory-mapping it would fail, or read beyond the data, only when a crop is taken)."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f".npy format version {version} is not one numpy.save writes here")
            shape, fortran, dtype = read[version](fh)
        except ValueError as exc:
            raise InputError(f"{path}: not a valid .npy file ({exc})") from None
        offset = fh.tell()
    dtype = np.dtype(dtype)
    claimed = math.prod(shape) * dtype.itemsize
    size = os.stat(path).st_size - offset
    if size != claimed:
        raise InputError(
            f"{path}: its header claims {dtype} {list(shape)} ({claimed} bytes) but the file holds "
            f"{size} bytes of data ({'cut short' if size < claimed else 'more than claimed'})"
        )
    return dtype, tuple(shape), bool(fortran)


def _check_array(
    meta_path: Path, name: str, suffix: str, field: str, ok: Any, want: str, shape: tuple | None
) -> tuple[int, ...]:
    """Check the array ``{name}{suffix}.npy`` beside ``meta_path`` against what it claims: inside the
    cache, C order, ``ok(dtype)`` true (``want`` says which dtype), ``shape`` (None: one axis). Returns
    its shape; InputError naming the metadata file, ``field`` and the array otherwise."""
    path = meta_path.parent / f"{name}{suffix}.npy"  # name: one checked file name (safe_case_name)
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            path_inside(meta_path.parent, name, f"{suffix}.npy")  # a link must stay in the cache
    except FileNotFoundError:
        pass
    if not path.is_file():
        raise InputError(f"{meta_path}: {field}: its array {path.name} is missing")
    dtype, got, fortran = _npy_header(path)
    if fortran or not ok(dtype) or (len(got) != 1 if shape is None else got != shape):
        raise InputError(
            f"{meta_path}: {field} does not match {path.name}, which holds {dtype} {list(got)}"
            f"{' in Fortran order' if fortran else ''} (expected {want} "
            f"{'of one axis' if shape is None else list(shape)})"
        )
    return got


def _nonfinite_field(value: Any, name: str = "") -> str | None:
    """The first field of ``value`` (JSON, walked) holding NaN or an infinity (JSON's ``NaN`` /
    ``Infinity`` tokens, or ``1e400``) and its value, as ``record.original_affine.0.0 nan``; None when
    every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{name or 'value'} {value}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if (found := _nonfinite_field(item, f"{name}.{key}" if name else str(key))) is not None:
            return found
    return None


def _check_counts(path: Path, meta: Any) -> None:
    """The voxel counts agree with the index lists they describe: each class counts at least the
    indices listed for it (lists are capped, counts are not) and at least one; a labelled case's
    foreground is the sum of its class counts; no count exceeds the volume's voxels. The training
    loss weights classes by these counts: a lie would weight them silently wrong."""
    voxels = math.prod(meta.shape)
    listed = [b - a for a, b in itertools.pairwise(meta.class_offsets)]
    for value, count, n in zip(meta.classes, meta.class_counts, listed, strict=True):
        if not 1 <= n <= count:
            raise InputError(
                f"{path}: class_counts: class {value} counts {count} voxels but lists {n} (expected 1..{count})"
            )
    if meta.labelled and sum(meta.class_counts) != meta.n_foreground:
        raise InputError(
            f"{path}: n_foreground {meta.n_foreground} is not the sum of class_counts ({sum(meta.class_counts)})"
        )
    if meta.n_foreground > voxels:
        raise InputError(
            f"{path}: n_foreground {meta.n_foreground} is more than the {voxels} voxels of shape"
        )


def _checked_meta(path: Path, data: Any) -> dict[str, Any]:
    """The metadata ``data`` of the case file ``path`` if reading can trust it (module docstring,
    "Reading trusts nothing"); InputError naming ``path`` and the field otherwise."""
    try:
        meta = CaseMeta.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, str(path)) from None
    if (field_ := _nonfinite_field(data)) is not None:
        raise InputError(f"{path}: {field_} is not a finite number")
    name = path.name.removesuffix(".json")
    safe_case_name(meta.case_id, f"{path}: case_id")
    if meta.case_id != name:
        raise InputError(f"{path}: case_id {meta.case_id!r} is not the file's own name {name!r}")
    dtype = meta.image_dtype
    if dtype is None and meta.format != 1:
        raise InputError(f"{path}: image_dtype: missing (format {meta.format} records it)")
    dtype = dtype or "float32"
    if dtype not in NUMPY_DTYPES or (meta.format == 1 and dtype != "float32"):
        choices = "float32 (format 1)" if meta.format == 1 else ", ".join(NUMPY_DTYPES)
        raise InputError(f"{path}: image_dtype {dtype!r}: expected {choices}")
    scale, want = meta.image_scale, step(dtype)
    if scale is not None and not math.isfinite(scale):
        raise InputError(f"{path}: image_scale {scale} is not a finite number")
    if scale != want:
        raise InputError(f"{path}: image_scale {scale} does not decode {dtype} (expected {want})")
    shape = tuple(meta.shape)
    if meta.record.shape != shape or meta.record.channels != meta.channels:
        raise InputError(
            f"{path}: shape {list(shape)} x {meta.channels} channels disagrees with record "
            f"({list(meta.record.shape)} x {meta.record.channels})"
        )
    want_dtype = np.dtype(NUMPY_DTYPES[dtype])
    _check_array(path, name, "", "image_dtype", lambda d: d == want_dtype, dtype, (meta.channels, *shape))
    n_classes = len(meta.classes)
    if (
        meta.classes != sorted(set(meta.classes))
        or len(meta.class_counts) != n_classes
        or len(meta.class_offsets) != n_classes + 1
        or meta.class_offsets[0] != 0
        or meta.class_offsets != sorted(meta.class_offsets)
    ):
        raise InputError(
            f"{path}: classes / class_counts / class_offsets disagree (classes ascending, one count "
            "each, offsets from 0 one more, ascending)"
        )
    _check_counts(path, meta)
    if meta.labelled:
        if meta.label_dtype is None:
            raise InputError(f"{path}: label_dtype: missing for a labelled case")
        if meta.label_dtype not in ("uint8", "uint16", "int32", "int64"):
            raise InputError(
                f"{path}: label_dtype {meta.label_dtype!r}: expected uint8, uint16, int32 or int64"
            )
        top = np.iinfo(np.dtype(meta.label_dtype)).max
        if meta.classes and meta.classes[-1] > top:
            raise InputError(
                f"{path}: classes: {meta.classes[-1]} cannot be a value of {meta.label_dtype} labels"
            )
        _check_array(
            path, name, "_seg", "label_dtype",
            lambda d: d.kind in "iu" and str(d) == meta.label_dtype, meta.label_dtype, shape,
        )  # fmt: skip
        (n,) = _check_array(path, name, "_cls", "class_offsets", lambda d: d == np.int64, "int64", None)
        if n != meta.class_offsets[-1]:
            raise InputError(
                f"{path}: class_offsets end at {meta.class_offsets[-1]}, {name}_cls.npy holds {n}"
            )
    elif n_classes:
        raise InputError(f"{path}: classes {meta.classes} in a case that is not labelled")
    (n,) = _check_array(path, name, "_fg", "n_foreground", lambda d: d == np.int64, "int64", None)
    if n > meta.n_foreground or (meta.n_foreground and not n):
        raise InputError(f"{path}: n_foreground {meta.n_foreground}, {name}_fg.npy lists {n} voxels")
    return data


@dataclass
class CachedCase:
    """One preprocessed case of a :class:`Cache`; arrays are memory-mapped on first access.

    stored: the image as stored, ``[C, X, Y, Z]`` of :attr:`image_dtype` (memory-mapped), whose values
    are ``stored * image_scale`` (``image_scale`` None: the stored numbers are the values); image:
    those values as float32 ``[C, X, Y, Z]`` (the memory map itself for a float32 cache, else decoded
    into memory: 4 bytes a voxel; the sampler reads ``stored`` instead); label: integer ``[X, Y, Z]``
    or None; foreground: int64 flat indices into ``X*Y*Z`` (labelled: label > 0, else image[0] > 0;
    a uniform subsample when there are more than the cache's cap); classes: foreground label values
    present (0 left out).
    """

    name: str
    folder: Path
    meta: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def _npy(self, suffix: str) -> np.ndarray:
        if suffix not in self._arrays:
            self._arrays[suffix] = np.load(self.folder / f"{self.name}{suffix}.npy", mmap_mode="r")
        return self._arrays[suffix]

    @property
    def stored(self) -> np.ndarray:
        return self._npy("")

    @property
    def image_dtype(self) -> str:
        """``"uint8"``, ``"int16"``, ``"float16"`` or ``"float32"`` (caches without the field: float32)."""
        return str(self.meta.get("image_dtype", "float32"))

    @property
    def image_scale(self) -> float | None:
        """Decode multiplier: value = stored code * image_scale (None: stored values are the values)."""
        scale = self.meta.get("image_scale")
        return None if scale is None else float(scale)

    @property
    def image(self) -> np.ndarray:
        return decode(self.stored, self.image_scale)

    @property
    def label(self) -> np.ndarray | None:
        return self._npy("_seg") if self.meta.get("labelled") else None

    @property
    def foreground(self) -> np.ndarray:
        return self._npy("_fg")

    @property
    def classes(self) -> list[int]:
        return list(self.meta.get("classes", []))

    def class_indices(self, value: int) -> np.ndarray:
        """Flat indices of voxels with ``label == value`` (stored list, possibly subsampled; 0 computed)."""
        if not self.meta.get("labelled"):
            raise InputError(f"case {self.name!r} has no label map")
        if value == 0:
            return np.flatnonzero(np.asarray(self.label).reshape(-1) == 0)
        if value not in self.classes:
            return np.zeros(0, dtype=np.int64)
        k = self.classes.index(value)
        offsets = self.meta["class_offsets"]
        return self._npy("_cls")[offsets[k] : offsets[k + 1]]

    @functools.cached_property
    def record(self) -> PreprocessRecord:
        return PreprocessRecord.model_validate(self.meta["record"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]


class Cache:
    """A preprocessed cache folder (see the module docstring). Open with :meth:`Cache.open`."""

    #: opened cases kept (with their memory maps); bounded so pools of 10,000 scans stay under the
    #: kernel's limit on mappings per process
    keep_open = 256

    def __init__(
        self,
        root: Path,
        plan: Plan,
        metas: dict[str, dict[str, Any]],
        label_names: dict[int, str] | None = None,
    ) -> None:
        self.root = root
        self.plan = plan
        #: label value -> name (background left out) from ``root/labels.json``; None: not known
        self.label_names = label_names
        self._metas = metas
        self.cases: list[str] = sorted(metas)
        self._open: OrderedDict[str, CachedCase] = OrderedDict()

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Cache:
        """Read ``root/plan.json``, the label names (``root/labels.json``, if there) and the metadata of
        every complete case made under that plan, each checked (module docstring, "Reading trusts
        nothing"): InputError naming the first file that fails and its field. Case files of other
        plans or formats are skipped (the next preprocess rewrites them); hidden files are ignored."""
        root = Path(root)
        plan_path = root / "plan.json"
        if not plan_path.exists():
            raise InputError(
                f"{root}: not a hiend-data cache (no plan.json; make one with `hiend-data preprocess`)"
            )
        try:
            plan = Plan.from_json(plan_path.read_bytes())
        except ValueError as exc:
            raise InputError(f"{plan_path}: invalid plan ({exc})") from None
        digest = plan.digest()
        metas = {}
        for f in sorted((root / "cases").glob("*.json")):
            if f.name.startswith("."):
                continue
            meta = read_json(f, expect=dict)
            if meta.get("format") in READ_FORMATS and meta.get("plan_digest") == digest:
                metas[f.name.removesuffix(".json")] = _checked_meta(f, meta)
        return cls(root, plan, metas, read_cache_label_names(root))

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, name: str | int) -> CachedCase:
        """The case named ``name`` (or the ``name``-th in :attr:`cases`)."""
        if isinstance(name, int):
            name = self.cases[name]
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        if name not in self._metas:
            raise InputError(f"{self.root}: no case {name!r} in the cache")
        case = CachedCase(name, self.root / "cases", self._metas[name])
        self._open[name] = case
        if len(self._open) > self.keep_open:
            self._open.popitem(last=False)
        return case
