"""hiend-eval: Dice, IoU, HD95, ASSD and NSD for label maps, folder scoring and reports.

Metric functions take boolean masks (``[X, Y, Z]``) and the spacing in mm per array axis; see
:mod:`hiend_eval.metrics` for the conventions, :mod:`hiend_eval.registry` for the metric registry
(:class:`Metric`, :func:`register`), and the README for how empty structures are scored.
"""

from .__about__ import __version__
from .labelmaps import score_label_maps
from .metrics import assd, dice, hd95, iou, nsd, score_masks, volume_ml
from .registry import (
    EMPTY_COMPUTE,
    EMPTY_DIAGONAL,
    EMPTY_ZERO,
    REGISTRY,
    Metric,
    PairStats,
    Scores,
    empty_flag,
    register,
    registered_metrics,
)
from .surfaces import diagonal_mm, surface, surface_distances

__all__ = [
    "__version__",
    "EMPTY_COMPUTE",
    "EMPTY_DIAGONAL",
    "EMPTY_ZERO",
    "REGISTRY",
    "Metric",
    "PairStats",
    "Scores",
    "assd",
    "diagonal_mm",
    "dice",
    "empty_flag",
    "hd95",
    "iou",
    "nsd",
    "register",
    "registered_metrics",
    "score_label_maps",
    "score_masks",
    "surface",
    "surface_distances",
    "volume_ml",
]
