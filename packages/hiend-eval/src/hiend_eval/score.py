"""Scoring folders (or single files) of predicted label maps against references.

* :func:`match_cases` pairs files by case name, hiend's one naming rule (:func:`hiend_data.naming.case_name`:
  the file name without ``.nii``/``.nii.gz`` and without an nnU-Net ``_0000`` channel suffix);
* :func:`score_case` loads one pair, checks it (integer labels, same grid) and scores every label;
* :func:`score_folders` does that for every case, in worker processes when there are several, and
  :func:`summarize` turns the per-case results into the ``summary.json`` structure, one entry per
  metric of the registry (:data:`hiend_eval.metrics.REGISTRY`).

A reference without a prediction is scored as an empty prediction (every structure "missed") and
listed under ``missing_predictions``; a prediction without a reference is listed under
``unmatched_predictions`` and otherwise ignored.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hiend_data.errors import InputError
from hiend_data.io import label_array
from hiend_data.jsonfile import parse_json
from hiend_data.labels import label_names_from_json, read_label_names
from hiend_data.naming import case_name, dicom_case_name

from .__about__ import __version__
from .labelmaps import FOREGROUND, c_order, label_boxes, present_values, score_label_maps
from .metrics import (
    EMPTY_DIAGONAL,
    EMPTY_ZERO,
    FLAG_ABSENT,
    FLAG_FALSE_POSITIVE,
    FLAG_MISSED,
    Metric,
    pair_scores,
    registered_metrics,
)

#: the ``format`` of hiend model checkpoints' metadata (hiend_model.checkpoint.FORMAT; not imported:
#: hiend-eval reads checkpoints' label names without hiend-model or torch)
CHECKPOINT_FORMAT = "hiend"
GEOMETRY_ATOL = 1e-4  # mm (affine entries), the same tolerance as hiend-data's grid check


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


@dataclass(frozen=True)
class CasePair:
    """One case: its name, the reference file and the prediction file (None when missing)."""

    case: str
    ref: Path
    pred: Path | None


@dataclass
class Matching:
    pairs: list[CasePair]
    missing_predictions: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)


SEG_SUFFIX = ".dcm"


def is_seg_name(path: str | os.PathLike[str]) -> bool:
    """A ``.dcm`` file name: a DICOM Segmentation label map (``hiend-model predict --format dicom-seg``)."""
    name = Path(path).name
    return name.lower().endswith(SEG_SUFFIX) and len(name) > len(SEG_SUFFIX)


def label_case_name(path: str | os.PathLike[str]) -> str | None:
    """The case a label-map file names: NIfTI by hiend's rule (:func:`hiend_data.naming.case_name`), a
    DICOM-SEG ``{case}.dcm`` by its name without ``.dcm``; None for anything else."""
    return case_name(path) or (dicom_case_name(path) if is_seg_name(path) else None)


def _index(folder: Path, what: str) -> dict[str, Path]:
    """Case name -> file of the label maps in ``folder`` (hidden files, such as temporary ones, skipped).

    NIfTI files and DICOM-SEG ``.dcm`` files; where a case has both (``predict --format both``), the
    NIfTI map is the one scored."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        cid = label_case_name(path)
        if cid is None or path.name.startswith("."):
            continue
        if not path.is_file():  # named as a label map but unreadable: never scored as "missing"
            what_is = "a broken symbolic link or a symbolic-link loop" if path.is_symlink() else "not a file"
            raise InputError(f"{path}: a {what} label map's name, but {what_is}")
        if cid in found:
            if is_seg_name(path) != is_seg_name(found[cid]):  # the same map twice: keep the NIfTI one
                if is_seg_name(found[cid]):
                    found[cid] = path
                continue
            raise InputError(
                f"{folder}: two {what} files for case {cid!r}: {found[cid].name} and {path.name}"
            )
        found[cid] = path
    return found


def check_no_loop(path: str | os.PathLike[str]) -> None:
    """InputError naming ``path`` when it, or a folder above it, is a symbolic-link loop (it can be
    neither read nor written: said so, not "no such file" or "file exists")."""
    try:
        Path(path).resolve()
    except RuntimeError:  # Python 3.11's pathlib: "Symlink loop from ..."
        pass
    except OSError as exc:  # later Pythons: ELOOP
        if exc.errno != errno.ELOOP:
            raise
    else:
        return
    raise InputError(f"{path}: a symbolic-link loop (too many levels of symbolic links)")


def match_cases(pred: Path, ref: Path) -> Matching:
    """Pair predictions with references; both folders (matched by case name) or both single files."""
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        check_no_loop(path)
        if not path.exists():
            raise FileNotFoundError(2, "no such file or directory", str(path))
    if pred.is_file() != ref.is_file():
        raise InputError(f"{pred} and {ref}: give two folders or two files, not one of each")
    if ref.is_file():
        cid = label_case_name(ref) or ref.name
        return Matching([CasePair(cid, ref, pred)])
    refs, preds = _index(ref, "reference"), _index(pred, "prediction")
    if not refs:
        raise InputError(f"{ref}: no reference label maps (.nii, .nii.gz or DICOM-SEG .dcm) in this folder")
    pairs = [CasePair(c, refs[c], preds.get(c)) for c in sorted(refs)]
    return Matching(
        pairs,
        missing_predictions=[c for c in sorted(refs) if c not in preds],
        unmatched_predictions=[preds[c].name for c in sorted(preds) if c not in refs],
    )


def read_labels(dataset_json: Path) -> dict[int, str]:
    """Label value -> name (background left out) from an nnU-Net ``dataset.json``: an alias of
    :func:`hiend_data.labels.read_label_names` (v2 and v1/MSD; regions refused)."""
    return read_label_names(dataset_json)


def read_checkpoint_label_names(path: Path) -> dict[int, str]:
    """Label value -> name from a hiend checkpoint (``.safetensors``): its metadata ``extra.labels``
    (what ``hiend-train finetune`` stores from the dataset.json), read without torch.

    InputError naming ``path`` for a file that is not a readable hiend checkpoint, and for one that
    carries no label names (then a dataset.json gives them).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{path}: not a hiend checkpoint (metadata format is {metadata.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    extra = parse_json(metadata.get("extra", "{}"), f"{path}: metadata 'extra'")
    labels = extra.get("labels") if isinstance(extra, dict) else None
    if labels is None:
        raise InputError(
            f"{path}: this checkpoint carries no label names (fine-tuned without a dataset.json's "
            "labels); give --labels the dataset.json instead"
        )
    return label_names_from_json(labels, f"{path}: metadata extra.labels")


def read_label_source(path: Path) -> dict[int, str]:
    """Label value -> name from ``--labels``: a hiend checkpoint (``.safetensors``:
    :func:`read_checkpoint_label_names`) or an nnU-Net ``dataset.json`` (anything else:
    :func:`read_labels`)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_checkpoint_label_names(path)
    return read_labels(path)


def _as_label_map(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map (smallest unsigned type) or InputError naming ``path``: hiend-data's one rule
    (:func:`hiend_data.io.label_array`: whole numbers 0..65535, nothing that a cast would wrap)."""
    return label_array(array, path)


def _common_block(
    pred: np.ndarray, pred_affine: np.ndarray, ref: np.ndarray, ref_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Both maps on one grid without interpolation when one is a DICOM-SEG, whose grid spans only the
    slices its frames cover: the reference's grid grown to cover the prediction's, when the two grids
    are blocks of one lattice (:func:`hiend_data.geometry.union_grid`); None otherwise. The grid keeps
    the reference's spacing and axis order, so the distances are the reference's."""
    from hiend_data.geometry import place_on_grid, union_grid

    grid = union_grid(ref_affine, ref.shape, pred_affine, pred.shape)
    if grid is None:
        return None
    affine, shape = grid
    placed = place_on_grid(pred, pred_affine, shape, affine), place_on_grid(ref, ref_affine, shape, affine)
    if placed[0] is None or placed[1] is None:
        return None
    return placed[0], placed[1]


def _resample_nearest(
    array: np.ndarray, affine: np.ndarray, ref_shape: tuple[int, ...], ref_affine: np.ndarray
) -> np.ndarray:
    """``array`` (on ``affine``) resampled onto the reference grid, nearest neighbour, 0 outside."""
    from scipy import ndimage

    ref_to_src = np.linalg.solve(affine, ref_affine)  # reference voxel -> source voxel (homogeneous)
    return ndimage.affine_transform(
        array, ref_to_src, output_shape=ref_shape, order=0, mode="constant", cval=0, prefilter=False
    )


def score_case(
    pair: CasePair,
    labels: Sequence[int] | None,
    tolerance: float = 2.0,
    resample_to_reference: bool = False,
    threads: int = 1,
) -> dict:
    """Load and score one case. Returns ``{"case", "pred", "ref", "labels": {key: Scores}, "found", "shape",
    "spacing"}``.

    ``labels``: values to score (None: every value > 0 in either map, listed in ``found``). A value in
    a map that is not in ``labels`` is an error (the dataset.json and the maps disagree). ``shape`` and
    ``spacing`` (mm per axis) are the grid the case was scored on.
    """
    from hiend_data import load_volume

    if pair.pred is not None and threads > 1:  # decompression releases the GIL: read both at once
        with ThreadPoolExecutor(max_workers=2) as pool:
            loading = pool.submit(load_volume, pair.ref), pool.submit(load_volume, pair.pred)
            ref_vol, pred_vol = loading[0].result(), loading[1].result()
    else:
        ref_vol = load_volume(pair.ref)
        pred_vol = load_volume(pair.pred) if pair.pred is not None else None
    ref = _as_label_map(np.asarray(ref_vol.array), pair.ref)
    spacing = tuple(float(s) for s in ref_vol.spacing)
    if pair.pred is None or pred_vol is None:
        pred = np.zeros_like(ref)
    else:
        pred = _as_label_map(np.asarray(pred_vol.array), pair.pred)
        same_shape = pred.shape == ref.shape
        same_affine = same_shape and np.allclose(pred_vol.affine, ref_vol.affine, atol=GEOMETRY_ATOL, rtol=0)
        common = None
        if not same_affine and (is_seg_name(pair.pred) or is_seg_name(pair.ref)):
            common = _common_block(pred, pred_vol.affine, ref, ref_vol.affine)
        if common is not None:
            pred, ref = common
        elif not same_affine:
            if not resample_to_reference:
                what = (
                    f"shape {pred.shape} vs {ref.shape}"
                    if not same_shape
                    else f"affine differs by up to {float(np.abs(pred_vol.affine - ref_vol.affine).max()):.4g} mm"
                )
                raise InputError(
                    f"case {pair.case}: prediction {pair.pred.name} and reference {pair.ref.name} "
                    f"are on different grids ({what}); use --resample-to-reference to resample "
                    "the prediction (nearest neighbour)"
                )
            pred = _resample_nearest(
                pred,
                np.asarray(pred_vol.affine, dtype=np.float64),
                ref.shape,
                np.asarray(ref_vol.affine, dtype=np.float64),
            )
    pred, ref, spacing = c_order(pred, ref, spacing)  # NIfTI arrays are Fortran-ordered
    boxes = (label_boxes(pred), label_boxes(ref))
    found = sorted(set(present_values(boxes[0])) | set(present_values(boxes[1])))
    if labels is not None:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            where = (
                pair.pred.name
                if pair.pred is not None and set(unknown) & set(present_values(boxes[0]))
                else pair.ref.name
            )
            raise InputError(
                f"case {pair.case}: label value(s) {unknown} in {where} are not in the dataset.json "
                f"(or checkpoint) labels {list(labels)}"
            )
    scores = score_label_maps(
        pred,
        ref,
        spacing,
        labels if labels is not None else found,
        tolerance,
        foreground=True,
        threads=threads,
        boxes=boxes,
    )
    return {
        "case": pair.case,
        "pred": str(pair.pred) if pair.pred else None,
        "ref": str(pair.ref),
        "labels": scores,
        "found": found,
        "shape": tuple(pred.shape),
        "spacing": spacing,
    }


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


def _placeholder(value: int, name: str) -> bool:
    """``label 3`` for segment 3: what ``hiend-model predict`` names a class it has no name for."""
    return name == f"label {value}"


def check_seg_names(pairs: Sequence[CasePair], labels: dict[int, str] | None) -> dict[int, str]:
    """The names the DICOM-SEGs among ``pairs`` give their segments (references first), after checking
    that they agree: every SEG names each segment number as ``labels`` (``--labels``) names that value,
    or, without ``labels``, as the first SEG that names it. A SEG whose segment 1 is ``spleen`` scored
    against maps whose 1 is ``liver`` would be scored as the same structure, silently: an InputError
    names the SEG, the segment and both names. hiend's placeholder ``label N`` (predict without names)
    agrees with any name. Reads each SEG's header only."""
    from hiend_data.dicom_seg import segment_names

    known: dict[int, tuple[str, str]] = {v: (n, "--labels") for v, n in (labels or {}).items()}
    for what in ("ref", "pred"):
        for pair in pairs:
            path = getattr(pair, what)
            if path is None or not is_seg_name(path):
                continue
            for value, name in segment_names(path).items():
                if _placeholder(value, name):
                    continue
                if value not in known:
                    known[value] = (name, path.name)
                elif known[value][0] != name:
                    other, where = known[value]
                    raise InputError(
                        f"{path}: segment {value} is {name!r} but {where} names label {value} {other!r}: "
                        "the maps do not mean the same structures"
                    )
    return {v: n for v, (n, _) in known.items()}


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else None


def summarize(results: list[dict], names: dict[str, str], tolerance: float, matching: Matching) -> dict:
    """The ``summary.json`` structure (JSON-ready: NaN -> None) from :func:`score_case` results.

    Per case and label: every registered metric and the flag; ``mean``: the metrics with
    :attr:`Metric.mean <hiend_eval.metrics.Metric.mean>` (registry order).
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


def default_workers() -> int:
    """CPUs this process may use (affinity-aware), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))
