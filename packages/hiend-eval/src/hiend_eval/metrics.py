"""Overlap and surface metrics of one structure, and the registry that defines every metric once.

Every function takes boolean masks of the same shape (any number of dimensions; ``[X, Y, Z]`` for
CT) and, for the distance metrics, ``spacing``: the voxel size in mm per *array axis* (the order of
``Volume.spacing``, not the NIfTI header's display order). Conventions (``DESIGN.md``, "Evaluation
conventions"), chosen to agree with MONAI 1.6 wherever both masks are non-empty:

* surface = the mask minus its 6-connected (face-neighbour) erosion, the outside of the array counting
  as background, so voxels on the array border are surface (MONAI: ``binary_erosion(m) ^ m`` after a
  zero-padded crop);
* surface distance = Euclidean distance in mm from a surface voxel's centre to the nearest surface
  voxel centre of the other mask;
* HD95 = the larger of the two directed 95th percentiles (linear interpolation, numpy's default);
* ASSD = the mean of all surface distances of both directions pooled;
* NSD = the fraction of the surface voxels of both masks that lie within ``tolerance`` mm of the other
  surface (voxel counts, MONAI's default, not surfel areas).

Empty masks are never hidden (see the README for the reasons): absent from both -> NaN; present in
one only -> Dice, IoU and NSD 0, HD95 and ASSD the image's physical diagonal (``diagonal_mm``), and
:func:`empty_flag` says "missed" (reference only) or "false_positive" (prediction only).

**One definition per metric.** A :class:`Metric` says how a metric is computed (a function of the
:class:`PairStats` of one structure: voxel counts, spacing, tolerance and, when it asks for them, the
two directed surface-distance arrays), what it is called (the key in :class:`Scores` and summary.json,
the per_case.csv column, the table header and unit), which way is better and how the empty-structure
rule applies to it. :data:`REGISTRY` holds them in column order; the scoring (:func:`pair_scores`,
:func:`score_masks`, ``hiend_eval.labelmaps``), ``summary.json``, ``per_case.csv`` and the terminal
table read it when they run, so a metric added with :func:`register` appears everywhere. The surface
distances are computed once per structure, for every metric that needs them; the one-metric functions
(:func:`dice`, :func:`hd95`, ...) are the same definitions applied alone.

Distances are computed in the union bounding box of both masks: surface voxels shared by both masks
are at distance 0; the others get an exact local search over nearby grid offsets, and the few with no
target within 3 voxels a k-d tree query (:mod:`hiend_eval.nearest`). On a 488 x 404 x 120 pair a k-d
tree alone was several times faster than a distance transform of the box, the local search faster still.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .nearest import nearest_distances

FLAG_MISSED = "missed"
FLAG_FALSE_POSITIVE = "false_positive"
FLAG_ABSENT = "absent_both"
# Distances this close (relative) to the NSD tolerance count as within it: a distance that is exactly
# the tolerance in exact arithmetic must not fall out through floating-point rounding.
_TOLERANCE_RTOL = 1e-9

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


def _check(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref masks differ in shape: {pred.shape} vs {ref.shape}")
    if pred.dtype != bool or ref.dtype != bool:
        raise ValueError(f"masks must be boolean arrays, got {pred.dtype} and {ref.dtype}")
    return pred, ref


def _spacing(spacing: Sequence[float] | float, ndim: int) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be finite and > 0 mm per axis, got {tuple(sp)}")
    return sp


def _check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"NSD tolerance must be a finite number of mm >= 0, got {tolerance}")
    return tolerance


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | float) -> float:
    """Physical diagonal of the image in mm: ``norm(shape * spacing)``; the distance given to a miss."""
    sp = _spacing(spacing, len(shape))
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * sp))


def empty_flag(pred: np.ndarray, ref: np.ndarray) -> str | None:
    """``"absent_both"``, ``"missed"`` (in ref only), ``"false_positive"`` (in pred only) or None."""
    p, r = bool(np.any(pred)), bool(np.any(ref))
    if p and r:
        return None
    if not p and not r:
        return FLAG_ABSENT
    return FLAG_MISSED if r else FLAG_FALSE_POSITIVE


def volume_ml(mask: np.ndarray, spacing: Sequence[float] | float) -> float:
    """Volume of a boolean mask in mL (voxel count x voxel volume in mm^3 / 1000)."""
    mask = np.asarray(mask)
    sp = _spacing(spacing, mask.ndim)
    return float(np.count_nonzero(mask)) * float(np.prod(sp)) / 1000.0


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask`` minus its 6-connected erosion (outside the array counts as background).

    Same as ``mask & ~scipy.ndimage.binary_erosion(mask, border_value=0)`` (MONAI's edge). Written as
    ANDs of the flat array with itself shifted by each axis' stride (contiguous, vectorised: ~7x faster
    than shifting n-D views); the wrap-around of a flat shift only ever lands on the first or last
    slice of an axis, which are border voxels and cleared afterwards. Returns a bool array of
    ``mask``'s shape.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    flat = mask.reshape(-1)
    eroded = flat.copy()
    stride = 1
    for axis in range(mask.ndim - 1, -1, -1):
        if mask.shape[axis] > 1:
            np.logical_and(eroded[stride:], flat[:-stride], out=eroded[stride:])
            np.logical_and(eroded[:-stride], flat[stride:], out=eroded[:-stride])
        stride *= mask.shape[axis]
    eroded = eroded.reshape(mask.shape)
    for axis in range(mask.ndim):  # border voxels are never interior
        index = [slice(None)] * mask.ndim
        for end in (0, -1):
            index[axis] = end
            eroded[tuple(index)] = False
    np.logical_xor(eroded, mask, out=eroded)  # eroded is a subset of mask: xor = mask minus erosion
    return eroded


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel, grown by ``margin`` and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface_distances_of_surfaces(
    surf_pred: np.ndarray, surf_ref: np.ndarray, spacing: Sequence[float] | float, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (mm) between two non-empty surfaces given as boolean arrays of one shape.

    Returns ``(d_pred_to_ref [n_pred_surface], d_ref_to_pred [n_ref_surface])`` float64, in the C order
    of the surface voxels. Voxels on both surfaces get 0 without a query.
    """
    sp = _spacing(spacing, surf_pred.ndim)
    flat_pred = np.flatnonzero(surf_pred)
    flat_ref = np.flatnonzero(surf_ref)
    shared_pred = surf_ref.reshape(-1)[flat_pred]  # per pred-surface voxel (C order): on the ref surface too?
    shared_ref = surf_pred.reshape(-1)[flat_ref]
    d_pred = np.zeros(len(flat_pred))
    d_ref = np.zeros(len(flat_ref))
    d_pred[~shared_pred] = nearest_distances(flat_pred[~shared_pred], surf_ref, sp, workers)
    d_ref[~shared_ref] = nearest_distances(flat_ref[~shared_ref], surf_pred, sp, workers)
    return d_pred, d_ref


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | float, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty masks (see the module docstring).

    Returns ``(d_pred_to_ref, d_ref_to_pred)``: one float64 distance per surface voxel of ``pred``
    resp. ``ref``. Raises ValueError when either mask is empty (the distances are undefined).
    """
    pred, ref = _check(pred, ref)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks (see empty_flag)")
    box = bounding_box(pred | ref, margin=1)
    return surface_distances_of_surfaces(surface(pred[box]), surface(ref[box]), spacing, workers)


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
    sp = tuple(float(s) for s in _spacing(spacing, len(shape)))
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
    pred, ref = _check(pred, ref)
    tolerance = _check_tolerance(tolerance)
    metrics = registered_metrics() if metrics is None else tuple(metrics)
    sp = tuple(_spacing(spacing, pred.ndim))
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
