"""``hiend-data preprocess``: every case of a dataset into a cache folder (:func:`preprocess_dataset`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..atomic import check_output_path, write_bytes
from ..discovery import Case, discover
from ..errors import InputError, shown
from ..plan import Plan
from .layout import MAX_INDICES, _checked_label_names, _dataset_label_names, write_label_names
from .process import _clean_temporaries, _is_current
from .reader import Cache
from .workers import Terminated, _run, _sigterm_raises, _writer_lock


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
    created = not out.exists()
    try:
        _write_cache(cases, out, folder, plan, names, workers, max_indices, progress, skip_bad)
    except InputError:
        # a refused run (bad input) leaves nothing behind: a cache this call created that holds no
        # finished case is removed whole (plan.json, the lock, an empty cases/). (A crash or a
        # signal keeps what is there: the next run cleans its temporaries and goes on.)
        if created and out.is_dir() and not any(folder.glob("*.json")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return Cache.open(out)


def _write_cache(
    cases: list[Case],
    out: Path,
    folder: Path,
    plan: Plan,
    names: dict[int, str] | None,
    workers: int,
    max_indices: int,
    progress: bool,
    skip_bad: bool,
) -> None:
    """The body of :func:`preprocess_dataset` once its inputs are checked: the lock, plan.json, the
    label names and the cases not yet current."""
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
