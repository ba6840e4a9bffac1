"""The ``summary.json`` structure of a scored run: per case, means, counts and the conventions in words.

One entry per metric of the registry (:data:`hiend_eval.registry.REGISTRY`), in its order; NaN becomes
``null``. Writing it is :mod:`hiend_eval.report`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .__about__ import __version__
from .labelmaps import FOREGROUND
from .matching import Matching
from .registry import (
    EMPTY_DIAGONAL,
    EMPTY_ZERO,
    FLAG_ABSENT,
    FLAG_FALSE_POSITIVE,
    FLAG_MISSED,
    Metric,
    registered_metrics,
)


def conventions(metrics: Sequence[Metric]) -> dict[str, str]:
    """The ``conventions`` block of summary.json: the scoring rules in words.

    Each metric's own line (:attr:`Metric.convention`) and the wording of the empty-structure rules
    (:attr:`Metric.empty`) come from ``metrics``, the registry.
    """
    zero = ", ".join(m.name for m in metrics if m.empty == EMPTY_ZERO)
    distances = [m.name for m in metrics if m.empty == EMPTY_DIAGONAL]
    diagonal = " and ".join([", ".join(distances[:-1]), distances[-1]] if len(distances) > 1 else distances)
    one_only = "; ".join(
        [
            *([f"{zero} 0"] if zero else []),
            *([f"{diagonal} = image diagonal in mm"] if diagonal else []),
            "counted",
        ]
    )
    return {
        "surface": "mask minus its 6-connected erosion; voxels on the array border are surface",
        "distances": "Euclidean, mm, voxel centres, header spacing of the reference in array-axis order",
        **{m.name: m.convention for m in metrics if m.convention},
        "absent_both": "structure in neither map: every metric null, left out of the means, counted",
        "missed": f"in the reference only: {one_only}",
        "false_positive": f"in the prediction only: {one_only}",
        "foreground": "union of all scored labels (value > 0), scored as one structure",
        "mean": "over the cases where the value is defined (not null), missed and false-positive cases included",
    }


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else None


def summarize(results: list[dict], names: dict[str, str], tolerance: float, matching: Matching) -> dict:
    """The ``summary.json`` structure (JSON-ready: NaN -> None) from :func:`score_case` results.

    Per case and label: every registered metric and the flag; ``mean``: the metrics with
    :attr:`Metric.mean <hiend_eval.registry.Metric.mean>` (registry order).
    """
    metrics = registered_metrics()
    keys = list(names) + [FOREGROUND]
    per_case = [
        {
            "case": r["case"],
            "pred": r["pred"],
            "ref": r["ref"],
            "labels": {k: _jsonable(r["labels"][k].as_dict()) for k in keys},
        }
        for r in results
    ]
    mean, counts = {}, {}
    for k in keys:
        rows = [r["labels"][k] for r in results]
        mean[k] = {m.name: _mean([s.values[m.name] for s in rows]) for m in metrics if m.mean}
        flags = [s.flag for s in rows]
        counts[k] = {
            "cases": len(rows),
            "scored": sum(f != FLAG_ABSENT for f in flags),
            "absent_both": flags.count(FLAG_ABSENT),
            "missed": flags.count(FLAG_MISSED),
            "false_positive": flags.count(FLAG_FALSE_POSITIVE),
        }
    return {
        "version": __version__,
        "tolerance_mm": tolerance,
        "conventions": conventions(metrics),
        "names": {**names, FOREGROUND: "union of all labels"},
        "mean": mean,
        "counts": counts,
        "missing_predictions": matching.missing_predictions,
        "unmatched_predictions": matching.unmatched_predictions,
        "per_case": per_case,
    }


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
