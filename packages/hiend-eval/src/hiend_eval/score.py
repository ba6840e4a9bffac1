"""Scoring folders (or single files) of predicted label maps against references.

:func:`score_folders` is the command without the writing: it pairs the files
(:func:`hiend_eval.matching.match_cases`), checks the DICOM-SEGs' segment names
(:func:`hiend_eval.labelnames.check_seg_names`), scores every case (:func:`hiend_eval.case.score_case`),
in worker processes when there are several, and returns the ``summary.json`` structure
(:func:`hiend_eval.summary.summarize`).

The names of those modules are importable from here too (``hiend_eval.score.match_cases``,
``read_label_source``, ``score_case``, ``summarize``, ...), where they lived before
the split.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hiend_data.errors import InputError

from .case import GEOMETRY_ATOL, score_case
from .labelmaps import FOREGROUND
from .labelnames import (
    CHECKPOINT_FORMAT,
    check_seg_names,
    read_checkpoint_label_names,
    read_label_source,
)
from .matching import SEG_SUFFIX, CasePair, Matching, check_no_loop, is_seg_name, label_case_name, match_cases
from .metrics import pair_scores
from .summary import conventions, summarize

__all__ = [
    "CHECKPOINT_FORMAT",
    "GEOMETRY_ATOL",
    "SEG_SUFFIX",
    "CasePair",
    "Matching",
    "check_no_loop",
    "check_seg_names",
    "conventions",
    "default_workers",
    "is_seg_name",
    "label_case_name",
    "match_cases",
    "read_checkpoint_label_names",
    "read_label_source",
    "score_case",
    "score_folders",
    "summarize",
]


def score_folders(
    pred: Path,
    ref: Path,
    labels: dict[int, str] | None = None,
    tolerance: float = 2.0,
    resample_to_reference: bool = False,
    workers: int = 1,
) -> dict:
    """Score every case of ``pred`` against ``ref`` and return the summary (see :func:`summarize`).

    ``labels``: value -> name (from dataset.json) or None for every value found; ``workers``: processes
    over cases (several cases) or threads over labels (one case). Memory: one pair per process.
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"--tolerance {tolerance}: must be a finite number of mm >= 0")
    matching = match_cases(pred, ref)
    seg_names = check_seg_names(matching.pairs, labels)
    values = list(labels) if labels is not None else None
    pairs = matching.pairs
    workers = max(1, int(workers))
    if workers > 1 and len(pairs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
            futures = [pool.submit(score_case, p, values, tolerance, resample_to_reference, 1) for p in pairs]
            try:
                results = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    else:
        results = [score_case(p, values, tolerance, resample_to_reference, threads=workers) for p in pairs]
    if values is None:  # every value found in any case; a case without it has it "absent from both"
        values = sorted({v for r in results for v in r["found"]})
        for r in results:
            absent = pair_scores(0, 0, 0, r["shape"], r["spacing"], tolerance)  # in neither map of this case
            r["labels"] = {
                **{str(v): r["labels"].get(str(v)) or absent for v in values},
                FOREGROUND: r["labels"][FOREGROUND],
            }
    if labels is None:  # unnamed: a DICOM-SEG's segment labels name its values (reference first)
        labels = {v: seg_names.get(v, str(v)) for v in values}
    names = {str(v): labels[v] for v in values}
    return summarize(results, names, tolerance, matching)


def default_workers() -> int:
    """CPUs this process may use (affinity-aware), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))
