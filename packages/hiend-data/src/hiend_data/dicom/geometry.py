"""Where each slice lies: position, orientation and pixel spacing checked, and the stack rule.

Each slice's (or frame's) ImagePositionPatient, ImageOrientationPatient and PixelSpacing must be
usable (:func:`_geometry`); no two slices at one position (:func:`_check_positions`); localizers and a
small minority orientation are left out only when they lie in another plane (:func:`_volume_slices`,
``SCOUT_MIN_ANGLE``); and every slice must lie where the volume's affine puts it, within
``max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_STEP x step)`` (:func:`_check_stack`).
:func:`_check_geometry` runs these over one series and returns how many slices the volume must have.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .files import _label
from .identity import _check_same, _value
from .pixels import _check_rescale

#: a slice may lie this far from where the affine puts it: max(mm, fraction x the slice step)
POSITION_TOLERANCE_MM = 0.1
POSITION_TOLERANCE_STEP = 0.10
#: ImageOrientationPatient: each vector's length within 1 +- this, their dot product within +- this
ORIENTATION_TOLERANCE = 1e-3
#: fewer than 4 slices of another orientation are dropped as a scout only when their plane is more than
#: this many degrees from the volume's (else they are a damaged slice of the volume: refused)
SCOUT_MIN_ANGLE = 30.0


def _numbers(where: Path, who: str, tag: str, value: Any, count: int) -> np.ndarray:
    """``value`` (a DICOM multi-value) as ``count`` finite floats, else InputError naming ``who``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {who}: {tag} {_shown_value(value)} is not {count} numbers") from None
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise InputError(f"{where}: {who}: {tag} {_shown_value(value)} is not {count} finite numbers")
    return out


def _shown_value(value: Any) -> str:
    try:
        return "[" + ", ".join(str(v) for v in value) + "]"
    except TypeError:
        return repr(value)


def _geometry(where: Path, who: str, ipp: Any, iop: Any, spacing: Any) -> tuple[np.ndarray, ...]:
    """(position, orientation, pixel spacing) checked: finite numbers, PixelSpacing > 0 (a negative one
    would mirror the image), ImageOrientationPatient two unit vectors at right angles."""
    for tag, value in (
        ("ImagePositionPatient", ipp),
        ("ImageOrientationPatient", iop),
        ("PixelSpacing", spacing),
    ):
        if value is None:
            raise InputError(f"{where}: {who} has no {tag}; cannot place the slice")
    pos = _numbers(where, who, "ImagePositionPatient", ipp, 3)
    ori = _numbers(where, who, "ImageOrientationPatient", iop, 6)
    spc = _numbers(where, who, "PixelSpacing", spacing, 2)
    if not np.all(spc > 0):
        raise InputError(
            f"{where}: {who}: PixelSpacing {_shown_value(spacing)} must be > 0 (mm between pixels)"
        )
    row, col = ori[:3], ori[3:]
    tol = ORIENTATION_TOLERANCE
    if abs(np.linalg.norm(row) - 1) > tol or abs(np.linalg.norm(col) - 1) > tol or abs(row @ col) > tol:
        raise InputError(
            f"{where}: {who}: ImageOrientationPatient {_shown_value(iop)} is not two unit vectors at right "
            f"angles (to {tol:g})"
        )
    return pos, ori, spc


def _frame_geometry(where: Path, ds: Any) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(who, position, orientation, spacing)`` of each frame of a multi-frame file, each value taken
    where dicom2nifti takes it (the frame's functional groups, else the shared ones, else the top level)."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def find(groups: Sequence[Any], seq: str, tag: str) -> Any:
        for g in groups:
            if g is None:
                continue
            if seq in g and g[seq].value and tag in g[seq].value[0]:
                return g[seq].value[0][tag].value
        for g in groups:
            if g is not None and tag in g:
                return g[tag].value
        return ds[tag].value if tag in ds else None

    out = []
    for i, frame in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
        who = f"{_label(ds)} frame {i + 1}"
        groups = (frame, shared)
        geo = _geometry(
            where,
            who,
            find((frame,), "PlanePositionSequence", "ImagePositionPatient"),
            find(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            find(groups, "PixelMeasuresSequence", "PixelSpacing"),
        )
        out.append((who, *geo))
    return out


def _volume_slices(where: Path, series: list[Any], orientations: list[np.ndarray]) -> list[int]:
    """Indices of the slices dicom2nifti builds the volume from, in its order: without localizers
    (ImageType LOCALIZER, CT PROJECTION IMAGE) and, where several orientations are present, without
    those of fewer than 4 slices; sorted along the axis of the largest position range.

    Such a minority, and a localizer, is left out only when it lies in another plane (a scout: its
    plane more than ``SCOUT_MIN_ANGLE`` degrees from the volume's); one in (nearly) the volume's own
    plane is refused, not silently left out (it may be the volume's first or last slice): a slice with
    another orientation there is tilted, mirrored or rotated in plane, and a localizer there is a
    slice of the volume flagged wrongly."""
    scouts, keep = [], []
    for i, ds in enumerate(series):
        kind = [str(t).upper() for t in (ds.get("ImageType") or [])]
        if "LOCALIZER" in kind or ("CT" in str(ds.get("Modality", "")) and "PROJECTION IMAGE" in kind):
            scouts.append(i)
        else:
            keep.append(i)
    groups: list[list[int]] = []
    for i in keep:
        for g in groups:
            if np.allclose(orientations[i], orientations[g[0]], rtol=0.001, atol=0.001):
                g.append(i)
                break
        else:
            groups.append([i])
    if len(groups) > 1:
        keep = [i for g in groups if len(g) >= 4 for i in g]
    if not keep:
        return keep
    main = orientations[keep[0]]
    for i in scouts + [g[0] for g in groups if len(g) < 4]:
        angle = _plane_angle(orientations[i], main)
        if angle > SCOUT_MIN_ANGLE:
            continue
        what = (
            f"flagged as a localizer (ImageType {_value(series[i].get('ImageType'))})"
            if i in scouts
            else f"ImageOrientationPatient {_shown_value(np.round(orientations[i], 4))}, not the other "
            f"slices' {_shown_value(np.round(main, 4))}"
        )
        raise InputError(
            f"{where}: {_label(series[i])}: {what}, in a plane {angle:.2g} degrees from the volume's "
            f"(a scout's is more than {SCOUT_MIN_ANGLE:g} away): a tilted, mirrored or mislabelled slice "
            "of the volume, not left out silently"
        )
    return keep


def _plane_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees (0 to 90) between the planes of two ImageOrientationPatient values."""
    na, nb = np.cross(a[:3], a[3:]), np.cross(b[:3], b[3:])
    cos = abs(float(na @ nb)) / max(float(np.linalg.norm(na) * np.linalg.norm(nb)), 1e-12)
    return float(np.degrees(np.arccos(min(cos, 1.0))))


def _check_stack(where: Path, who: list[str], pos: np.ndarray, ori: np.ndarray) -> None:
    """Every slice at its place on the affine's line: slice k of n (sorted) must lie within
    ``max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_STEP x step)`` of ``first + k (last - first) / (n - 1)``
    (3-D distance: uneven gaps, missing slices and drift off the stack line all count). This bounds the
    position error of every slice's voxels in the affine dicom2nifti builds; a per-gap rule does not."""
    n = len(pos)
    if n < 2:
        return
    step = (pos[-1] - pos[0]) / (n - 1)
    size = float(np.linalg.norm(step))
    if size == 0:
        return  # all at one position: refused as duplicates
    err = pos - (pos[0] + np.arange(n)[:, None] * step)
    dist = np.linalg.norm(err, axis=1)
    k = int(np.argmax(dist))
    tol = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_STEP * size)
    if dist[k] <= tol:
        return
    normal = np.cross(ori[:3], ori[3:])
    along = abs(float(err[k] @ normal))
    gaps = np.diff(pos @ normal)
    raise InputError(
        f"{where}: missing slices or uneven slice spacing: {who[k]} (slice {k + 1} of {n}) lies "
        f"{dist[k]:.3g} mm from where the volume's affine puts it ({along:.3g} mm along the slice normal), "
        f"more than the tolerance of {tol:.3g} mm (max {POSITION_TOLERANCE_MM:g} mm, "
        f"{POSITION_TOLERANCE_STEP:.0%} of the {size:.4g} mm slice step): slice gaps "
        f"{np.abs(gaps).min():.4g} to {np.abs(gaps).max():.4g} mm along the slice normal"
    )


def _check_geometry(where: Path, chosen: list[Any], multi: Any) -> int | None:
    """Geometry of the one series: each slice's (or frame's) values usable, the volume's slices of one
    size, pixel spacing and rescale (:func:`_check_rescale`), and every slice where the affine puts it
    (:func:`_check_stack`). Returns how many slices the volume must have (None: dicom2nifti refuses)."""
    if multi is not None:
        frames = _frame_geometry(where, multi)
        if not frames:
            return None
        declared = multi.get("NumberOfFrames", 1)
        if _value(declared) != str(len(frames)):
            raise InputError(
                f"{where}: {_label(multi)}: NumberOfFrames {_value(declared)} but {len(frames)} per-frame "
                "functional groups"
            )
        who = [f[0] for f in frames]
        for name, _, _, spc in frames[1:]:
            if not np.allclose(spc, frames[0][3], rtol=1e-4, atol=0):
                raise InputError(
                    f"{where}: frames of different PixelSpacing: {_shown_value(frames[0][3])} ({who[0]}) and "
                    f"{_shown_value(spc)} ({name})"
                )
        _check_positions(where, who, [f[1] for f in frames])
        if all(np.allclose(f[2], frames[0][2], rtol=0.001, atol=0.001) for f in frames):
            _check_stack(where, who, np.array([f[1] for f in frames]), frames[0][2])
        return len(frames)
    geo = [_geometry(where, _label(ds), ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                     ds.get("PixelSpacing")) for ds in chosen]  # fmt: skip
    _check_positions(where, [_label(ds) for ds in chosen], [g[0] for g in geo])
    keep = _volume_slices(where, chosen, [g[1] for g in geo])
    if len(keep) < 4:
        return None  # dicom2nifti refuses: fewer than 4 slices
    used = [chosen[i] for i in keep]
    _check_same(
        where, used, ("Rows", "Columns", "PixelSpacing"), "slices of different sizes or pixel spacing"
    )
    _check_rescale(where, used)
    if not all(np.allclose(geo[i][1], geo[keep[0]][1], rtol=0.001, atol=0.001) for i in keep):
        return None  # dicom2nifti refuses: mixed slice orientations
    pos = np.array([geo[i][0] for i in keep])
    order = np.argsort(pos[:, int(np.argmax(np.ptp(pos, axis=0)))], kind="stable")  # dicom2nifti's sort
    _check_stack(where, [_label(used[j]) for j in order], pos[order], geo[keep[0]][1])
    return len(keep)


def _check_positions(where: Path, who: list[str], positions: list[np.ndarray]) -> None:
    """Two slices (frames) at one position, to 1e-3 mm (dicom2nifti would silently drop exact copies)."""
    seen: dict[tuple[float, ...], str] = {}
    for name, p in zip(who, positions, strict=True):
        pos = tuple(round(float(v), 3) for v in p)
        if pos in seen:
            raise InputError(
                f"{where}: duplicate slice position {pos} in {seen[pos]} and {name} (two copies or two series mixed)"
            )
        seen[pos] = name
