"""What a metric is, and the registry that defines every metric once.

**One definition per metric.** A :class:`Metric` says how a metric is computed (a function of the
:class:`PairStats` of one structure: voxel counts, spacing, tolerance and, when it asks for them, the
two directed surface-distance arrays), what it is called (the key in :class:`Scores` and summary.json,
the per_case.csv column, the table header and unit), which way is better and how the empty-structure
rule applies to it. :data:`REGISTRY` holds them in column order; the scoring
(:func:`hiend_eval.metrics.pair_scores`, :func:`hiend_eval.metrics.score_masks`,
``hiend_eval.labelmaps``), ``summary.json``, ``per_case.csv`` and the terminal table read it when they
run, so a metric added with :func:`register` appears everywhere. The built-in metrics are registered by
:mod:`hiend_eval.metrics` (imported with the package), in column order.

Empty masks are never hidden (see the README for the reasons): absent from both -> NaN; present in
one only -> the metric's empty rule (:attr:`Metric.empty`), and :func:`empty_flag` says "missed"
(reference only) or "false_positive" (prediction only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .surfaces import diagonal_mm

FLAG_MISSED = "missed"
FLAG_FALSE_POSITIVE = "false_positive"
FLAG_ABSENT = "absent_both"

#: Empty-structure rules (:attr:`Metric.empty`). Absent from both masks, a metric of the first two rules
#: is NaN; present in one only, it is 0 (``EMPTY_ZERO``: overlap fractions, worst possible) or the image
#: diagonal in mm (``EMPTY_DIAGONAL``: distances, worst possible). ``EMPTY_COMPUTE``: the function is
#: always called, empty or not (quantities of each mask alone, such as volumes).
EMPTY_ZERO = "zero"
EMPTY_DIAGONAL = "diagonal"
EMPTY_COMPUTE = "compute"
EMPTY_RULES = (EMPTY_ZERO, EMPTY_DIAGONAL, EMPTY_COMPUTE)
# Keys a metric cannot take: the other columns of per_case.csv and Scores' own fields.
_RESERVED = frozenset({"case", "label", "name", "flag", "values"})


@dataclass(frozen=True)
class Scores:
    """All metrics of one structure in one case.

    ``values``: metric name -> value, in the order of :data:`REGISTRY` (NaN where undefined, i.e. absent
    from both masks; distances in mm, volumes in mL); each one reads as an attribute too (``s.dice``,
    ``s.hd95``). ``flag`` is None when both masks are non-empty, else ``"missed"``,
    ``"false_positive"`` or ``"absent_both"``.
    """

    values: Mapping[str, float]
    flag: str | None

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("values")  # absent while unpickling
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no metric {name!r}")

    def __hash__(self) -> int:
        return hash((tuple(self.values.items()), self.flag))

    def as_dict(self) -> dict[str, float | str | None]:
        """``{metric: value, ..., "flag": flag}``: the per-case record of summary.json and per_case.csv."""
        return {**self.values, "flag": self.flag}


@dataclass(frozen=True)
class PairStats:
    """What a metric function reads about one structure (prediction P, reference R) in one case.

    ``inter``, ``n_pred``, ``n_ref``: voxel counts ``|P & R|``, ``|P|``, ``|R|``; ``shape``: the full
    image shape in voxels; ``spacing``: mm per array axis; ``tolerance``: the NSD tolerance in mm;
    ``d_pred`` [surface voxels of P] and ``d_ref`` [surface voxels of R]: the directed surface distances
    in mm (float64), set when both masks are non-empty and a metric of the run needs them
    (:attr:`Metric.needs_distances`), else None.
    """

    inter: int
    n_pred: int
    n_ref: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    tolerance: float
    d_pred: np.ndarray | None = None
    d_ref: np.ndarray | None = None

    @property
    def flag(self) -> str | None:
        """None (both non-empty), ``"absent_both"``, ``"missed"`` or ``"false_positive"``."""
        if self.n_pred and self.n_ref:
            return None
        if not self.n_pred and not self.n_ref:
            return FLAG_ABSENT
        return FLAG_MISSED if self.n_ref else FLAG_FALSE_POSITIVE

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL (mm^3 / 1000)."""
        return float(np.prod(np.asarray(self.spacing, dtype=np.float64))) / 1000.0

    @property
    def diagonal_mm(self) -> float:
        """The image's physical diagonal in mm (:func:`diagonal_mm`)."""
        return diagonal_mm(self.shape, self.spacing)

    def distances(self) -> tuple[np.ndarray, np.ndarray]:
        """``(d_pred, d_ref)``; ValueError when they were not computed (see :attr:`Metric.needs_distances`)."""
        if self.d_pred is None or self.d_ref is None:
            raise ValueError("surface distances were not computed: the metric must set needs_distances=True")
        return self.d_pred, self.d_ref


@dataclass(frozen=True)
class Metric:
    """One metric, defined once; the scoring, summary.json, per_case.csv and the table all read it.

    * ``name``: the key in :class:`Scores` and summary.json (per case, and in ``mean``) and the
      per_case.csv column;
    * ``title``, ``unit``: the terminal table's column header is ``title`` followed by ``unit``
      (``"HD95"``, ``"mm"`` -> ``HD95 mm``); ``unit`` is ``""`` for a fraction;
    * ``higher_is_better``: True or False; None for a quantity that is neither (a volume);
    * ``compute``: :class:`PairStats` -> float. Spacing and tolerance are always in the stats; with
      ``needs_distances`` the two directed surface-distance arrays are too (computed once per structure
      for every metric that asks). Called when both masks are non-empty, or always under
      ``EMPTY_COMPUTE``;
    * ``empty``: the empty-structure rule (:data:`EMPTY_ZERO`, :data:`EMPTY_DIAGONAL`,
      :data:`EMPTY_COMPUTE`, see there);
    * ``mean``: averaged over the cases where defined into summary.json ``mean`` and shown in the table
      (the volumes are not: a mean volume over labels of different organs says little);
    * ``digits``: decimals in the table;
    * ``convention``: one line for summary.json ``conventions`` (None: the name says it all).
    """

    name: str
    title: str
    unit: str
    higher_is_better: bool | None
    compute: Callable[[PairStats], float]
    empty: str = EMPTY_ZERO
    needs_distances: bool = False
    mean: bool = True
    digits: int = 3
    convention: str | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name in _RESERVED:
            raise ValueError(
                f"metric name {self.name!r} is empty or reserved ({', '.join(sorted(_RESERVED))})"
            )
        if self.empty not in EMPTY_RULES:
            raise ValueError(f"metric {self.name!r}: empty rule {self.empty!r} is not one of {EMPTY_RULES}")
        if self.digits < 0:
            raise ValueError(f"metric {self.name!r}: digits must be >= 0, got {self.digits}")

    @property
    def header(self) -> str:
        """The table's column header: ``title`` and ``unit``."""
        return f"{self.title} {self.unit}" if self.unit else self.title

    def value(self, stats: PairStats) -> float:
        """The metric of one structure, the empty-structure rule applied."""
        flag = stats.flag
        if flag is None or self.empty == EMPTY_COMPUTE:
            return float(self.compute(stats))
        if flag == FLAG_ABSENT:
            return float("nan")
        return 0.0 if self.empty == EMPTY_ZERO else stats.diagonal_mm


#: Every metric, by name, in column order (summary.json, per_case.csv, the table). Read at scoring time.
REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`REGISTRY` (after the others); returns it. ValueError if the name is taken.

    Worker processes see a metric registered at run time where they are forked from the caller (Linux);
    elsewhere register it in a module imported on start-up.
    """
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    REGISTRY[metric.name] = metric
    return metric


def registered_metrics() -> tuple[Metric, ...]:
    """The metrics of :data:`REGISTRY`, in column order."""
    return tuple(REGISTRY.values())


def empty_flag(pred: np.ndarray, ref: np.ndarray) -> str | None:
    """``"absent_both"``, ``"missed"`` (in ref only), ``"false_positive"`` (in pred only) or None."""
    p, r = bool(np.any(pred)), bool(np.any(ref))
    if p and r:
        return None
    if not p and not r:
        return FLAG_ABSENT
    return FLAG_MISSED if r else FLAG_FALSE_POSITIVE
