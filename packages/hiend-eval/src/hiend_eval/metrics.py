"""The built-in metrics of one structure, and scoring one structure with every registered metric.

Every function takes boolean masks of the same shape (any number of dimensions; ``[X, Y, Z]`` for
CT) and, for the distance metrics, ``spacing``: the voxel size in mm per *array axis* (the order of
``Volume.spacing``, not the NIfTI header's display order). Conventions (``DESIGN.md``, "Evaluation
conventions"), chosen to agree with MONAI 1.6 wherever both masks are non-empty:

* surface and surface distance: see :mod:`hiend_eval.surfaces`;
* HD95 = the larger of the two directed 95th percentiles (linear interpolation, numpy's default);
* ASSD = the mean of all surface distances of both directions pooled;
* NSD = the fraction of the surface voxels of both masks that lie within ``tolerance`` mm of the other
  surface (voxel counts, MONAI's default, not surfel areas).

Empty masks are never hidden (see the README for the reasons): absent from both -> NaN; present in
one only -> Dice, IoU and NSD 0, HD95 and ASSD the image's physical diagonal (``diagonal_mm``), and
:func:`empty_flag` says "missed" (reference only) or "false_positive" (prediction only).

The metrics are registered here, in column order, in the registry of :mod:`hiend_eval.registry`
(:class:`Metric`, :data:`REGISTRY`, :func:`register`). :func:`pair_scores` and :func:`score_masks`
compute every registered metric of one structure, the surface distances once for all that need them;
the one-metric functions (:func:`dice`, :func:`hd95`, ...) are the same definitions applied alone.

The registry's and the surfaces' names are importable from here too (``hiend_eval.metrics.REGISTRY``,
``hiend_eval.metrics.surface_distances``, ...), where they lived before the split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .registry import (
    EMPTY_COMPUTE,
    EMPTY_DIAGONAL,
    EMPTY_RULES,
    EMPTY_ZERO,
    FLAG_ABSENT,
    FLAG_FALSE_POSITIVE,
    FLAG_MISSED,
    REGISTRY,
    Metric,
    PairStats,
    Scores,
    empty_flag,
    register,
    registered_metrics,
)
from .surfaces import (
    bounding_box,
    check_masks,
    diagonal_mm,
    spacing_mm,
    surface,
    surface_distances,
    surface_distances_of_surfaces,
)

__all__ = [
    "ASSD",
    "DICE",
    "EMPTY_COMPUTE",
    "EMPTY_DIAGONAL",
    "EMPTY_RULES",
    "EMPTY_ZERO",
    "FLAG_ABSENT",
    "FLAG_FALSE_POSITIVE",
    "FLAG_MISSED",
    "HD95",
    "IOU",
    "NSD",
    "REGISTRY",
    "VOLUME_PRED",
    "VOLUME_REF",
    "Metric",
    "PairStats",
    "Scores",
    "assd",
    "bounding_box",
    "check_tolerance",
    "diagonal_mm",
    "dice",
    "empty_flag",
    "hd95",
    "iou",
    "nsd",
    "pair_scores",
    "register",
    "registered_metrics",
    "score_masks",
    "surface",
    "surface_distances",
    "surface_distances_of_surfaces",
    "volume_ml",
]

# Distances this close (relative) to the NSD tolerance count as within it: a distance that is exactly
# the tolerance in exact arithmetic must not fall out through floating-point rounding.
_TOLERANCE_RTOL = 1e-9


def check_tolerance(tolerance: float) -> float:
    """The NSD tolerance as a float; ValueError unless it is a finite number of mm >= 0."""
    tolerance = float(tolerance)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"NSD tolerance must be a finite number of mm >= 0, got {tolerance}")
    return tolerance


def volume_ml(mask: np.ndarray, spacing: Sequence[float] | float) -> float:
    """Volume of a boolean mask in mL (voxel count x voxel volume in mm^3 / 1000)."""
    mask = np.asarray(mask)
    sp = spacing_mm(spacing, mask.ndim)
    return float(np.count_nonzero(mask)) * float(np.prod(sp)) / 1000.0


# The built-in metrics: their functions (of PairStats) and their registry entries, in column order.


def _dice(s: PairStats) -> float:
    return float("nan") if s.n_pred + s.n_ref == 0 else 2.0 * s.inter / (s.n_pred + s.n_ref)


def _iou(s: PairStats) -> float:
    union = s.n_pred + s.n_ref - s.inter
    return float("nan") if union == 0 else s.inter / union


def _hd95(s: PairStats) -> float:
    d_pred, d_ref = s.distances()
    return max(float(np.percentile(d_pred, 95)), float(np.percentile(d_ref, 95)))


def _assd(s: PairStats) -> float:
    d_pred, d_ref = s.distances()
    return (float(d_pred.sum()) + float(d_ref.sum())) / (len(d_pred) + len(d_ref))


def _nsd(s: PairStats) -> float:
    d_pred, d_ref = s.distances()
    tol = s.tolerance * (1.0 + _TOLERANCE_RTOL)
    within = int(np.count_nonzero(d_pred <= tol)) + int(np.count_nonzero(d_ref <= tol))
    return within / (len(d_pred) + len(d_ref))


def _volume_pred(s: PairStats) -> float:
    return s.n_pred * s.voxel_ml


def _volume_ref(s: PairStats) -> float:
    return s.n_ref * s.voxel_ml


DICE = register(Metric("dice", "Dice", "", True, _dice))
IOU = register(Metric("iou", "IoU", "", True, _iou))
HD95 = register(
    Metric(
        "hd95",
        "HD95",
        "mm",
        False,
        _hd95,
        EMPTY_DIAGONAL,
        needs_distances=True,
        digits=2,
        convention="max of the two directed 95th percentiles of surface distances (linear interpolation)",
    )
)
ASSD = register(
    Metric(
        "assd",
        "ASSD",
        "mm",
        False,
        _assd,
        EMPTY_DIAGONAL,
        needs_distances=True,
        digits=2,
        convention="mean of the surface distances of both directions pooled",
    )
)
NSD = register(
    Metric(
        "nsd",
        "NSD",
        "",
        True,
        _nsd,
        EMPTY_ZERO,
        needs_distances=True,
        convention="fraction of surface voxels of both masks within the tolerance of the other surface (voxel counts)",
    )
)
VOLUME_PRED = register(
    Metric("volume_pred_ml", "Volume pred", "mL", None, _volume_pred, EMPTY_COMPUTE, mean=False, digits=1)
)
VOLUME_REF = register(
    Metric("volume_ref_ml", "Volume ref", "mL", None, _volume_ref, EMPTY_COMPUTE, mean=False, digits=1)
)


def pair_scores(
    inter: int,
    n_pred: int,
    n_ref: int,
    shape: Sequence[int],
    spacing: Sequence[float] | float,
    tolerance: float,
    masks: tuple[np.ndarray, np.ndarray] | None = None,
    workers: int = 1,
    metrics: Sequence[Metric] | None = None,
) -> Scores:
    """Every metric of one structure from its voxel counts and, when both are non-empty, its masks.

    The building block of :func:`score_masks` and of the multi-label path (``hiend_eval.labelmaps``).
    ``inter``, ``n_pred``, ``n_ref``: ``|P & R|``, ``|P|``, ``|R|``; ``shape``: the full image shape
    (for the diagonal); ``spacing``: mm per array axis; ``tolerance``: NSD tolerance in mm; ``masks``:
    ``(pred, ref)`` bool arrays of one shape, the whole image or a box cut out of it with at least one
    voxel of margin around both masks (so that erosion at its edge sees background), needed only when
    both are non-empty and a metric needs surface distances (computed once, for all of them);
    ``workers``: threads for the nearest-neighbour queries; ``metrics``: what to compute (default:
    :data:`REGISTRY`, in its order).
    """
    metrics = registered_metrics() if metrics is None else tuple(metrics)
    sp = tuple(float(s) for s in spacing_mm(spacing, len(shape)))
    d_pred = d_ref = None
    if n_pred and n_ref and any(m.needs_distances for m in metrics):
        if masks is None:
            raise ValueError(
                "pair_scores: both masks are non-empty and a metric needs surface distances; "
                "pass masks=(pred, ref)"
            )
        d_pred, d_ref = surface_distances_of_surfaces(surface(masks[0]), surface(masks[1]), sp, workers)
    stats = PairStats(
        int(inter), int(n_pred), int(n_ref), tuple(int(n) for n in shape), sp, float(tolerance), d_pred, d_ref
    )
    return Scores({m.name: m.value(stats) for m in metrics}, stats.flag)


def score_masks(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | float,
    tolerance: float = 2.0,
    workers: int = 1,
    metrics: Sequence[Metric] | None = None,
) -> Scores:
    """Every metric of one structure at once (the surfaces and distances are computed once).

    ``pred``, ``ref``: bool arrays of one shape; ``spacing``: mm per array axis; ``tolerance``: NSD
    tolerance in mm; ``workers``: threads for the nearest-neighbour queries; ``metrics``: what to
    compute (default: :data:`REGISTRY`).
    """
    pred, ref = check_masks(pred, ref)
    tolerance = check_tolerance(tolerance)
    metrics = registered_metrics() if metrics is None else tuple(metrics)
    sp = tuple(spacing_mm(spacing, pred.ndim))
    inter, n_pred, n_ref = (
        int(np.count_nonzero(pred & ref)),
        int(np.count_nonzero(pred)),
        int(np.count_nonzero(ref)),
    )
    masks = None
    if n_pred and n_ref and any(m.needs_distances for m in metrics):
        box = bounding_box(pred | ref, margin=1)
        masks = (pred[box], ref[box])
    return pair_scores(inter, n_pred, n_ref, pred.shape, sp, tolerance, masks, workers, metrics)


def _one(
    metric: Metric,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | float = 1.0,
    tolerance: float = 2.0,
) -> float:
    """One metric of :func:`score_masks`: the same definition, applied alone."""
    return score_masks(pred, ref, spacing, tolerance, metrics=(metric,)).values[metric.name]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice = 2|P & R| / (|P| + |R|); NaN when both are empty, 0 when only one is."""
    return _one(DICE, pred, ref)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """IoU (Jaccard) = |P & R| / |P | R|; NaN when both are empty, 0 when only one is."""
    return _one(IOU, pred, ref)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float) -> float:
    """95th-percentile Hausdorff distance in mm (max of both directions); see the module docstring."""
    return _one(HD95, pred, ref, spacing)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float) -> float:
    """Average symmetric surface distance in mm (mean over both directions' distances, pooled)."""
    return _one(ASSD, pred, ref, spacing)


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float, tolerance: float = 2.0) -> float:
    """Normalised surface Dice: fraction of both surfaces' voxels within ``tolerance`` mm of the other."""
    return _one(NSD, pred, ref, spacing, tolerance)
