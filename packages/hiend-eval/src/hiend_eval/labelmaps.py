"""Every label of a pair of label maps in one go: the fast path behind ``hiend-eval score``.

One pass per map (``scipy.ndimage.find_objects``) gives every label's bounding box; each label is then
scored inside the union box of its prediction and reference boxes, grown by one voxel (so erosion at
the box edge sees background, exactly as on the whole image), with every metric of the registry of
:mod:`hiend_eval.registry`. The numbers are those of :func:`hiend_eval.metrics.score_masks` on the
full-size masks; only the work is smaller.

"foreground" is the union of all scored labels (every label value > 0 of the given list), scored as one
more binary structure: it answers "did the model find the anatomy at all", independent of which label
it gave each voxel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from .metrics import check_tolerance, pair_scores
from .registry import Scores
from .surfaces import spacing_mm

FOREGROUND = "foreground"


def _union_box(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: Sequence[int], margin: int = 1
) -> tuple[slice, ...]:
    boxes = [x for x in (a, b) if x is not None]
    return tuple(
        slice(
            max(min(x[d].start for x in boxes) - margin, 0),
            min(max(x[d].stop for x in boxes) + margin, shape[d]),
        )
        for d in range(len(shape))
    )


def _merge_boxes(boxes: Sequence[tuple[slice, ...] | None], shape: Sequence[int]) -> tuple[slice, ...] | None:
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(
        slice(min(b[d].start for b in present), max(b[d].stop for b in present)) for d in range(len(shape))
    )


def _box_of(boxes: list[tuple[slice, ...] | None], value: int) -> tuple[slice, ...] | None:
    return boxes[value - 1] if 0 < value <= len(boxes) else None


def _check_maps(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    for name, arr in (("pred", pred), ("ref", ref)):
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} label map must have an integer dtype, got {arr.dtype}")


def _score_binary(
    pm: np.ndarray,
    rm: np.ndarray,
    shape: Sequence[int],
    spacing: tuple[float, ...],
    tolerance: float,
    workers: int,
) -> Scores:
    """Scores of two boolean masks cut out of the full image (the box has a 1-voxel margin)."""
    n_pred, n_ref = int(np.count_nonzero(pm)), int(np.count_nonzero(rm))
    inter = int(np.count_nonzero(pm & rm)) if n_pred and n_ref else 0
    return pair_scores(inter, n_pred, n_ref, shape, spacing, tolerance, (pm, rm), workers)


def c_order(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Views of both maps in C order, with the spacing permuted to match.

    NIfTI data comes in Fortran order; every metric is unchanged by permuting the axes together with the
    spacing, and C-order (contiguous) access is 2-3x faster. ``ref`` decides; ``pred`` is copied only
    when its layout differs.
    """
    if ref.flags.f_contiguous and not ref.flags.c_contiguous:
        return np.ascontiguousarray(pred.T), ref.T, tuple(spacing)[::-1]
    return pred, ref, tuple(spacing)


def label_boxes(label_map: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Bounding box of every value 1..max of a non-negative integer map (None where absent), one pass."""
    from scipy import ndimage

    if label_map.dtype.kind not in "iu":
        raise ValueError(f"label map must have an integer dtype, got {label_map.dtype}")
    return ndimage.find_objects(label_map)


def present_values(boxes: Sequence[tuple[slice, ...] | None]) -> list[int]:
    """Label values (> 0) that have a box, i.e. occur in the map."""
    return [i + 1 for i, b in enumerate(boxes) if b is not None]


def score_label_maps(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int] | None = None,
    tolerance: float = 2.0,
    foreground: bool = True,
    threads: int = 1,
    boxes: tuple[list, list] | None = None,
) -> dict[str, Scores]:
    """Score every label of ``labels`` (values > 0; None: every value > 0 in either map) and their union.

    ``pred``, ``ref``: non-negative integer label maps of one shape ``[X, Y, Z]``; ``spacing``: mm per
    array axis; ``tolerance``: NSD tolerance in mm; ``foreground``: also score the union of ``labels``
    under the key ``"foreground"``; ``threads``: labels scored concurrently (the heavy parts, k-d tree
    queries and numpy reductions, release the GIL); ``boxes``: ``(label_boxes(pred), label_boxes(ref))``
    when already computed (then the maps are used as given; else they are taken in C order, see
    :func:`c_order`). Voxels of values not in ``labels`` are not scored anywhere.
    Returns ``{str(value): Scores, ..., "foreground": Scores}`` in the order of ``labels``.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_maps(pred, ref)
    tolerance = check_tolerance(tolerance)
    sp = tuple(float(s) for s in spacing_mm(spacing, pred.ndim))
    if boxes is None:
        pred, ref, sp = c_order(pred, ref, sp)
        boxes = (label_boxes(pred), label_boxes(ref))
    boxes_pred, boxes_ref = boxes
    if labels is None:
        labels = sorted(set(present_values(boxes_pred)) | set(present_values(boxes_ref)))
    values = [int(v) for v in labels]
    if any(v <= 0 for v in values):
        raise ValueError(f"label values to score must be > 0 (background is not scored), got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"label values listed twice: {values}")
    shape = pred.shape

    def one(value: int) -> Scores:
        bp, br = _box_of(boxes_pred, value), _box_of(boxes_ref, value)
        if bp is None and br is None:
            return pair_scores(0, 0, 0, shape, sp, tolerance)
        if bp is None or br is None:  # one side empty: only the voxel counts are needed
            n_pred = int(np.count_nonzero(pred[bp] == value)) if bp is not None else 0
            n_ref = int(np.count_nonzero(ref[br] == value)) if br is not None else 0
            return pair_scores(0, n_pred, n_ref, shape, sp, tolerance)
        box = _union_box(bp, br, shape)
        return _score_binary(pred[box] == value, ref[box] == value, shape, sp, tolerance, workers=1)

    def union() -> Scores:
        wanted = set(values)
        if not values:
            return pair_scores(0, 0, 0, shape, sp, tolerance)
        box = _merge_boxes([_box_of(b, v) for b in (boxes_pred, boxes_ref) for v in values], shape)
        if box is None:
            return pair_scores(0, 0, 0, shape, sp, tolerance)
        box = _union_box(box, None, shape)
        present = set(present_values(boxes_pred)) | set(present_values(boxes_ref))
        if present <= wanted:  # every non-zero value is scored: the union is simply "> 0"
            pm, rm = pred[box] > 0, ref[box] > 0
        else:
            lut = np.zeros(max(max(present), max(values)) + 1, dtype=bool)
            lut[values] = True
            pm, rm = lut[pred[box]], lut[ref[box]]
        return _score_binary(pm, rm, shape, sp, tolerance, workers=1)

    # Biggest boxes first so that concurrent workers finish together.
    def size(v: int) -> int:
        bp, br = _box_of(boxes_pred, v), _box_of(boxes_ref, v)
        if bp is None or br is None:
            return 0
        return int(np.prod([s.stop - s.start for s in _union_box(bp, br, shape)]))

    tasks: list[tuple[str, Callable[[], Scores]]] = [
        (str(v), partial(one, v)) for v in sorted(values, key=size, reverse=True)
    ]
    if foreground:
        tasks.insert(0, (FOREGROUND, union))
    if threads > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            done = dict(zip([k for k, _ in tasks], pool.map(lambda t: t[1](), tasks), strict=True))
    else:
        done = {k: f() for k, f in tasks}
    order = [str(v) for v in values] + ([FOREGROUND] if foreground else [])
    return {k: done[k] for k in order}
