"""Writing a label map as a DICOM Segmentation of its source series (:func:`write_seg`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .frames import frame_planes, frame_voxels
from .rules import (
    _TYPE2_DEFAULTS,
    SEG_SERIES_NUMBER_OFFSET,
    SEG_TYPES,
    _charset,
    _require,
    _segment_names,
    check_long_string,
)


def _transfer_syntax(seg_type: str) -> Any:
    """BINARY: Explicit VR Little Endian (1-bit frames; highdicom allows only JPEG 2000 beside it, whose
    encoder is another install). LABELMAP: JPEG-LS lossless when pydicom has the encoder (pyjpegls,
    which highdicom installs), else uncompressed."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

    if seg_type == "labelmap":
        try:
            from pydicom.pixels import get_encoder

            if get_encoder(JPEGLSLossless).is_available:
                return JPEGLSLossless
        except (ImportError, NotImplementedError):  # pragma: no cover - an old pydicom
            pass
    return ExplicitVRLittleEndian


def _with_type2(datasets: Sequence[Any]) -> list[Any]:
    """Copies of the headers with the Type 2 patient/study attributes highdicom copies present (empty
    where the scanner left them out)."""
    import copy

    out = []
    for ds in datasets:
        ds = copy.copy(ds)  # shallow: the attributes set below are this copy's only
        for name in _TYPE2_DEFAULTS:
            if name not in ds:
                setattr(ds, name, "")
        out.append(ds)
    return out


#: SNOMED CT concepts of paired organs by side, which pydicom's code dictionary does not name
#: (TotalSegmentator's and the phantoms' ``kidney_left`` ...): (organ, side) -> (code, meaning)
LATERAL_SCT: dict[tuple[str, str], tuple[str, str]] = {
    ("kidney", "left"): ("18639004", "Left kidney"),
    ("kidney", "right"): ("9846003", "Right kidney"),
    ("lung", "left"): ("44029006", "Left lung"),
    ("lung", "right"): ("3341006", "Right lung"),
}

#: segment colours (sRGB), one per segment number in turn: distinct for neighbouring organs
PALETTE: tuple[tuple[int, int, int], ...] = (
    (221, 130, 101),
    (157, 108, 162),
    (185, 102, 83),
    (255, 187, 97),
    (241, 214, 145),
    (116, 196, 213),
    (144, 238, 144),
    (255, 99, 71),
    (30, 144, 255),
    (255, 215, 0),
    (186, 85, 211),
    (0, 206, 209),
)


def _category_and_type(name: str) -> tuple[Any, Any]:
    """SNOMED CT codes for a label name: (Anatomical Structure, the organ) for a name pydicom knows
    (``"liver"``, ``"spleen"``, ``"lungs"`` as Lung) and for a paired organ with its side
    (``"kidney_left"``, ``"left kidney"``, ``"lung_right"``: :data:`LATERAL_SCT`); otherwise
    (Tissue, Tissue)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    words = [w.lower() for w in name.replace("_", " ").replace("-", " ").split()]
    sides = [w for w in words if w in ("left", "right")]
    organ = [w for w in words if w not in ("left", "right")]
    if len(sides) == 1 and len(organ) == 1:
        base = organ[0].removesuffix("s")
        if (base, sides[0]) in LATERAL_SCT:
            value, meaning = LATERAL_SCT[(base, sides[0])]
            return codes.SCT.AnatomicalStructure, hd.sr.CodedConcept(value, "SCT", meaning)
    candidates = ["".join(w.capitalize() for w in words)]
    if words and words[-1].endswith("s"):  # lungs -> Lung
        candidates.append("".join(w.capitalize() for w in [*words[:-1], words[-1][:-1]]))
    for key in candidates:
        try:
            code = getattr(codes.SCT, key)
        except AttributeError:
            continue
        return codes.SCT.AnatomicalStructure, code
    return codes.SCT.Tissue, codes.SCT.Tissue


def display_colour(number: int) -> Any:
    """The segment's RecommendedDisplayCIELabValue (highdicom ``CIELabColor``) from :data:`PALETTE`."""
    import highdicom as hd

    return hd.color.CIELabColor.from_rgb(*PALETTE[(number - 1) % len(PALETTE)])


def write_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    source: Sequence[Any],
    out: str | os.PathLike[str],
    names: Mapping[int, str] | None = None,
    *,
    software_version: str = "",
    description: str = "hiend segmentation",
    algorithm: str = "hiend",
    seg_type: str = "binary",
) -> Path:
    """Write ``labels`` as one DICOM Segmentation of the series ``source`` to ``out`` (atomically).

    Args:
        labels: ``[X, Y, Z]`` integer label map on the grid ``load_volume`` returned for the series.
        affine: that grid's 4x4 RAS+ affine (mm).
        source: the series' datasets (:func:`hiend_data.dicom.series_headers`; pixel data not needed).
        names: label value -> name; segments ``1 .. max(label, name)`` are all described (a label
            without a name is ``"label N"``); each name is written exactly (UTF-8 when not ASCII) or
            refused (:func:`check_long_string`: more than 64 characters, a backslash, a control
            character), before anything is written.
        software_version, description, algorithm: the SEG's SoftwareVersions, SeriesDescription and
            the segments' algorithm name (the same rule as the names).
        seg_type: ``"binary"`` (every viewer and PACS reads it: one 1-bit frame per slice and segment
            present, uncompressed) or ``"labelmap"`` (DICOM 2024's LABELMAP Segmentation: one frame
            per slice holding the label values, JPEG-LS lossless; for 41 labels 136x smaller, 11x
            faster to write and 6x faster to read than BINARY (BENCHMARKS.md); newer viewers only).

    Returns ``out``. Raises InputError when the map is not on the series' grid, and for a label map
    without any segment to describe (all background and no names).
    """
    hd = _require()
    from pydicom.sr.codedict import codes

    if seg_type not in SEG_TYPES:
        raise InputError(f"{out}: segmentation type {seg_type!r}, expected one of {', '.join(SEG_TYPES)}")
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"{out}: a DICOM Segmentation needs a 3-D label map, got shape {labels.shape}")
    if labels.dtype.kind not in "ui" or (labels.size and int(labels.min()) < 0):
        raise InputError(f"{out}: label map of dtype {labels.dtype}, expected non-negative integers")
    top = int(labels.max()) if labels.size else 0
    segments = _segment_names(names, top, out)
    texts = [software_version or "unknown", description, algorithm]
    for text, what in zip(texts, ("software version", "description", "algorithm name"), strict=True):
        check_long_string(text, what, out)
    if not segments:
        raise InputError(f"{out}: nothing to write: the label map is all background and no labels are named")
    datasets = list(source)
    single = not (len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0])
    planes = frame_planes(datasets)
    if single:  # frames in slice order: a SEG reads best in the order of the stack
        normal = np.cross(planes[0][1][:3], planes[0][1][3:])
        order = np.argsort([float(normal @ p[0]) for p in planes], kind="stable")
        datasets = [datasets[i] for i in order]
        planes = [planes[i] for i in order]
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    where = getattr(datasets[0], "filename", None) or "the source series"
    index = frame_voxels(planes, affine, labels.shape, rows, columns, where=Path(str(where)).parent)
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    frames = np.stack([m.take(labels) for m in index]).astype(dtype, copy=False)
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=software_version or "unknown", family=codes.DCM.ArtificialIntelligence
    )
    descriptions = []
    for number, name in segments.items():
        category, kind = _category_and_type(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                display_color=display_colour(number),
            )
        )
    first = datasets[0]
    try:
        series_number = int(first.get("SeriesNumber") or 0) + SEG_SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        series_number = SEG_SERIES_NUMBER_OFFSET
    import logging

    quiet = logging.getLogger("highdicom")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "all frames empty: encoding all of them" is not the user's business
    try:
        seg = hd.seg.Segmentation(
            source_images=_with_type2(datasets),
            pixel_array=frames,
            segmentation_type=SEG_TYPES[seg_type],
            transfer_syntax_uid=_transfer_syntax(seg_type),
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="hiend",
            manufacturer_model_name=algorithm,
            software_versions=software_version or "unknown",
            device_serial_number="0",
            series_description=description,
            content_label="HIEND",
            content_description=description,
            **_charset([*segments.values(), *texts]),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(
            f"{out}: cannot build the DICOM Segmentation ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        quiet.setLevel(level)
    out = Path(out)
    with atomic_path(out) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out
