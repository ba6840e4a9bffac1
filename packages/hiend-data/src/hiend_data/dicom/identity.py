"""Which datasets are the series: image objects, one SeriesInstanceUID, one patient and study.

The rules (module docstring of :mod:`hiend_data.dicom`, **One series**): the image objects (not SEG,
RTDOSE, DICOMDIR, ...: ``_NOT_SCANS``) grouped by SeriesInstanceUID and one of them picked
(:func:`_pick_series`); each SOPInstanceUID read once, two different files under one refused
(:func:`_unique_instances`); tags every file of the series must agree on (:func:`_check_same`, values
shown and compared by :func:`_value`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..dicom_seg import LABELMAP_SEG_SOP_CLASS, SEG_SOP_CLASS
from ..errors import InputError
from .files import _label

#: SOP classes that carry pixel data but are not a scan (hiend reads images, not these)
_NOT_SCANS = {
    SEG_SOP_CLASS: "SEG",
    LABELMAP_SEG_SOP_CLASS: "SEG",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))


def _has_pixels(ds: Any) -> bool:
    return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _is_scan(ds: Any, headers_only: bool = False) -> bool:
    """An image (pixel data; read without it: rows and columns) that is not a SEG, RTDOSE, ..."""
    pixels = ("Rows" in ds and "Columns" in ds) if headers_only else _has_pixels(ds)
    return pixels and _sop_class(ds) not in _NOT_SCANS


def _is_image_object(ds: Any, headers_only: bool = False) -> bool:
    """A scan, or a file that should be one: an ``... Image Storage`` SOP class (or none, with rows and
    columns) whether or not its pixel data is there."""
    from pydicom.uid import UID

    sop = _sop_class(ds)
    if sop in _NOT_SCANS:
        return False
    if _is_scan(ds, headers_only):
        return True
    return "Image Storage" in UID(sop).name if sop else ("Rows" in ds and "Columns" in ds)


def _kind(ds: Any) -> str:
    sop = _sop_class(ds)
    if sop in _NOT_SCANS:
        return _NOT_SCANS[sop]
    return str(ds.get("Modality", "") or "unknown")


def _is_multiframe(ds: Any) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _describe_series(groups: dict[str, list[Any]]) -> str:
    parts = []
    for uid, members in groups.items():
        desc = str(members[0].get("SeriesDescription", "") or "")
        parts.append(f"{uid or '(no SeriesInstanceUID)'} {desc!r} ({len(members)} files)")
    return "; ".join(parts)


def _pick_series(where: Path, scans: list[Any], series: str | Sequence[str] | None) -> list[Any]:
    groups: dict[str, list[Any]] = {}
    for ds in scans:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if series is not None and (isinstance(series, str) or len(groups) > 1):
        wanted = {series} if isinstance(series, str) else set(series)
        chosen = {uid: members for uid, members in groups.items() if uid in wanted}
        if not chosen:
            raise InputError(
                f"{where}: no series {', '.join(sorted(wanted))}; the folder holds {_describe_series(groups)}"
            )
        groups = chosen
    if len(groups) > 1:
        raise InputError(
            f"{where}: {len(groups)} series in one folder: {_describe_series(groups)}; "
            "pick one with --series UID (series= in load_volume)"
        )
    return next(iter(groups.values()))


def _check_same(where: Path, series: list[Any], tags: Sequence[str], what: str) -> None:
    """Every dataset of ``series`` holds the first one's values of ``tags`` (numbers compared to 6
    significant digits, a missing value as empty), else InputError naming both values and a file of each."""
    for tag in tags:
        first = _value(series[0].get(tag))
        for ds in series[1:]:
            other = _value(ds.get(tag))
            if other != first:
                raise InputError(
                    f"{where}: {what}: {tag} {first} ({_label(series[0])}) and {other} ({_label(ds)}); "
                    "one series must not mix them"
                )


def _value(v: Any) -> str:
    """A tag's value as shown and compared: ``'text'``, ``512``, ``[0.7, 0.7]``."""
    if v is None:
        return "''"
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "[" + ", ".join(_value(x) for x in v) + "]"
    try:
        return f"{float(v):.6g}" if not isinstance(v, str) else repr(v.strip())
    except (TypeError, ValueError):
        return repr(str(v).strip())


def _unique_instances(where: Path, images: list[Any]) -> list[Any]:
    """``images`` with each SOPInstanceUID once: files sharing one must be byte-for-byte copies (the
    same slice saved twice, read once); two different files under one SOPInstanceUID (an edited copy,
    a re-export mixed in) are refused, naming both."""
    out: list[Any] = []
    first: dict[str, Any] = {}
    for ds in images:
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        if not uid:
            out.append(ds)
            continue
        if uid not in first:
            first[uid] = ds
            out.append(ds)
            continue
        try:
            same = Path(first[uid].filename).read_bytes() == Path(ds.filename).read_bytes()
        except (OSError, TypeError):
            same = False
        if not same:
            raise InputError(
                f"{where}: {_label(first[uid])} and {_label(ds)}: two different files with one "
                f"SOPInstanceUID {uid} (an edited copy or two exports mixed?)"
            )
    return out
