"""What hiend's DICOM Segmentations hold: their SOP classes and types, the text rules of Long String
values (:func:`check_long_string`, :func:`check_segment_names`) and the highdicom requirement."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError

#: SOP classes of DICOM Segmentations (the second: Label Map Segmentation Storage, DICOM 2024)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS)
#: Type 2 attributes highdicom copies from the source images; scanners may leave them out
_TYPE2_DEFAULTS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
SEG_SERIES_NUMBER_OFFSET = 1000  # the SEG's SeriesNumber: the source's + this (a common convention)


#: ``seg_type`` -> DICOM SegmentationType
SEG_TYPES = {"binary": "BINARY", "labelmap": "LABELMAP"}
#: The longest value of VR LO (Long String: SegmentLabel, SeriesDescription, AlgorithmName, ...)
LO_MAX_CHARS = 64
#: SpecificCharacterSet of a SEG holding text that is not plain ASCII (UTF-8)
UTF8_CHARSET = "ISO_IR 192"
#: The DCM code of a LABELMAP's background segment (what highdicom writes as segment 0)
BACKGROUND_CODE = ("125040", "DCM")


def check_long_string(value: object, what: str, where: object) -> str:
    """``value`` if a DICOM Long String (VR LO) holds it exactly as written: text of at most
    :data:`LO_MAX_CHARS` characters, no backslash (LO's value separator: ``liver\\spleen`` would read
    back as two values), no control or format character (newline, ESC, bidirectional overrides), no
    leading or trailing blank (LO padding, which readers strip). Anything else is an InputError naming
    ``where`` and ``what`` (e.g. ``label 3 name``) with the value, never a silent cut or substitution;
    characters outside ASCII are fine (:func:`write_seg` then writes UTF-8)."""
    why = None
    if not isinstance(value, str):
        why = "is not text"
    elif len(value) > LO_MAX_CHARS:
        why = f"has {len(value)} characters, more than the {LO_MAX_CHARS} of a DICOM Long String"
    elif "\\" in value:
        why = "holds a backslash, DICOM's value separator (it would read back as several values)"
    elif any(not ch.isprintable() and unicodedata.category(ch) != "Zs" for ch in value):
        why = "holds a control or format character"
    elif value != value.strip():
        why = "begins or ends with a blank, which DICOM readers strip"
    if why is not None:
        text = repr(value) if len(str(value)) <= 2 * LO_MAX_CHARS else repr(str(value)[:LO_MAX_CHARS]) + "..."
        raise InputError(f"{where}: {what} {text} {why}; a DICOM Segmentation cannot hold it as written")
    return value  # type: ignore[return-value]


def check_segment_names(names: Mapping[int, str] | None, where: object = "DICOM Segmentation") -> None:
    """Refuse (InputError naming ``where``, the label number and the name) any segment name
    :func:`check_long_string` refuses: what :func:`write_seg` would refuse, checked before any work."""
    for number, name in sorted((names or {}).items()):
        if name:
            check_long_string(name, f"label {number} name", where)


def _charset(texts: Sequence[str]) -> dict[str, str]:
    """highdicom's ``specific_character_set`` argument: UTF-8 (:data:`UTF8_CHARSET`) when any of
    ``texts`` is not plain ASCII; else none given, so that highdicom copies the source series'
    SpecificCharacterSet (which holds ASCII whatever it is, and the patient's name as the source has it)."""
    return {} if all(t.isascii() for t in texts) else {"specific_character_set": UTF8_CHARSET}


def _require() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise InputError(
            f"DICOM Segmentation needs highdicom ({exc}): pip install 'hiend-data[dicom]'"
        ) from None
    return highdicom


def _segment_names(names: Mapping[int, str] | None, top: int, where: object) -> dict[int, str]:
    """Segment number -> name for ``1 .. max(top, named)`` (``"label N"`` where unnamed), each name
    checked by :func:`check_long_string` (refused, never cut)."""
    check_segment_names(names, where)
    names = dict(names or {})
    top = max([top, *names]) if names else top
    return {v: str(names.get(v) or f"label {v}") for v in range(1, top + 1)}
