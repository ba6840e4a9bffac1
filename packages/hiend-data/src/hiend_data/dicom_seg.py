"""DICOM Segmentation objects (SEG) out of and back into hiend label maps (the ``hiend-data[dicom]`` extra).

**highdicom** (the ecosystem's SEG implementation, on pydicom) builds and parses the objects; this
module only maps between hiend's grid and the source series' frames:

* :func:`write_seg`: a label map on the grid :func:`hiend_data.load_volume` gave for a DICOM series ->
  one BINARY Segmentation referencing that series and, frame by frame, the source images it segments;
  one segment per foreground label (segment number = label value, labelled with its name); frames
  without any voxel of a segment are left out (highdicom's ``omit_empty_frames``).
* :func:`decode_on_source`: a SEG -> the label map on the source series' grid again, voxel for voxel,
  through the frames' referenced source images (what :func:`write_seg` wrote, read back).
* :func:`read_seg`: a SEG alone -> a label map on the SEG's own grid (the span of its frames along the
  slice normal; the frames it leaves out are background): what ``load_volume`` returns for a SEG file,
  so that ``hiend-eval score`` reads SEGs from any tool.

Geometry: each source frame's pixel ``(row r, column c)`` lies at ``IPP + c * dc * F_row + r * dr *
F_col`` (DICOM's ImagePositionPatient, ImageOrientationPatient ``F_row, F_col`` and PixelSpacing ``dr,
dc``, LPS); hiend's affines are RAS+ (nibabel), so a frame's voxels on the hiend grid are
``inv(affine) @ diag(-1, -1, 1) @ position``. The mapping must land on whole voxels (within
:data:`VOXEL_TOL`) along the grid's axes, or the label map was not made on this series' grid.

Integrity rules (refused with one :class:`InputError` line naming the file; nothing is dropped quietly):

* **Text** (:func:`check_long_string`): segment names and the other strings :func:`write_seg` puts in
  Long String (LO) attributes are written exactly as given or refused: at most 64 characters, no
  backslash (LO's value separator), no control or format character, no leading or trailing blank (LO
  padding, dropped by readers). A name that is not plain ASCII makes the SEG UTF-8 (SpecificCharacterSet
  ``ISO_IR 192``), so ``Leber–Läsion 肝`` reads back as written; otherwise the source's character set
  is kept (highdicom copies it).
* **Segments** (read): segment numbers start at 1 and appear once in SegmentSequence (a LABELMAP may
  also describe 0 as its background: PixelPaddingValue 0 or the DCM Background code); every BINARY
  frame's ReferencedSegmentNumber and every LABELMAP pixel value other than 0 is a described segment.
  A segment numbered 0 or one not described would decode as background: its voxels lost.
* **References** (:func:`check_references`): a SEG given as the label of a DICOM image must reference
  that image's series (ReferencedSeriesSequence) and share its FrameOfReferenceUID, where the SEG
  states them. A SEG paired with a NIfTI image has nothing to compare (NIfTI carries no UIDs): only
  the grid check applies.
"""

from __future__ import annotations

import contextlib
import os
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .limits import check_volume_bytes
from .naming import is_dicom_file

#: SOP classes of DICOM Segmentations (the second: Label Map Segmentation Storage, DICOM 2024)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS)
#: How far (in voxels) a source frame's pixel may lie from the hiend grid's voxel centres
VOXEL_TOL = 0.25
#: RAS <-> LPS (its own inverse)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
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


def _require() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise InputError(
            f"DICOM Segmentation needs highdicom ({exc}): pip install 'hiend-data[dicom]'"
        ) from None
    return highdicom


def _floats(values: Any) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def _first(ds: Any, sequence: str) -> Any:
    item = ds.get(sequence)
    return item[0] if item else None


def frame_planes(datasets: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(position, orientation, spacing)`` of every source frame (LPS mm; orientation 6 values: the
    row then the column direction; spacing ``[between rows, between columns]``), in ``datasets`` order
    (single-frame slices), or frame order of one multi-frame file."""
    if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
        ds = datasets[0]
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        planes = []
        for frame in ds.PerFrameFunctionalGroupsSequence:

            def pick(seq: str, frame: Any = frame) -> Any:
                got = _first(frame, seq)
                return got if got is not None else (_first(shared, seq) if shared is not None else None)

            pos, ori, mea = (
                pick("PlanePositionSequence"),
                pick("PlaneOrientationSequence"),
                pick("PixelMeasuresSequence"),
            )
            if pos is None or ori is None or mea is None:
                raise InputError(
                    f"{ds.filename}: a frame without plane position, orientation or pixel spacing"
                )
            planes.append(
                (
                    _floats(pos.ImagePositionPatient),
                    _floats(ori.ImageOrientationPatient),
                    _floats(mea.PixelSpacing),
                )
            )
        return planes
    return [
        (_floats(ds.ImagePositionPatient), _floats(ds.ImageOrientationPatient), _floats(ds.PixelSpacing))
        for ds in datasets
    ]


@dataclass(frozen=True)
class FrameMap:
    """Where one source frame lies on the hiend grid: ``index`` (a tuple of two slices and an int, basic
    indexing, so a view) selects its voxels; ``transposed``: the view's axes are (column, row)."""

    index: tuple[Any, Any, Any]
    transposed: bool

    def take(self, labels: np.ndarray) -> np.ndarray:
        """The frame ``[rows, columns]`` of ``labels`` (a view)."""
        view = labels[self.index]
        return view.T if self.transposed else view

    def put(self, out: np.ndarray, frame: np.ndarray) -> None:
        """Write the frame ``[rows, columns]`` into ``out``."""
        out[self.index] = frame.T if self.transposed else frame


def _axis_slice(start: int, step: int, n: int) -> slice:
    stop = start + step * n
    return slice(start, None if stop < 0 else stop, step)


def frame_voxels(
    planes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    affine: np.ndarray,
    shape: Sequence[int],
    rows: int,
    columns: int,
    where: object = "the source series",
) -> list[FrameMap]:
    """For each frame, its :class:`FrameMap` on the hiend grid (``frame = map.take(labels)``).
    InputError naming ``where`` when a frame does not lie on the grid (off the voxel centres, not
    along its axes, or outside it)."""
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ LPS_FROM_RAS
    out = []
    for n, (pos, ori, spacing) in enumerate(planes):
        corner = (to_voxel @ np.append(pos, 1.0))[:3]
        step_c = to_voxel[:3, :3] @ (ori[:3] * spacing[1])  # one column to the right
        step_r = to_voxel[:3, :3] @ (ori[3:] * spacing[0])  # one row down
        ints = [np.round(v) for v in (corner, step_c, step_r)]
        off = max(float(np.abs(v - i).max()) for v, i in zip((corner, step_c, step_r), ints, strict=True))
        unit = all(int(np.abs(i).sum()) == 1 and float(np.abs(i).max()) == 1 for i in ints[1:])
        o = ints[0].astype(np.int64)
        a_c, a_r = int(np.argmax(np.abs(ints[1]))), int(np.argmax(np.abs(ints[2])))
        if off > VOXEL_TOL or not unit or a_c == a_r:
            raise InputError(
                f"{where}: frame {n + 1} does not lie on the label map's grid (off by {off:.3g} voxels); "
                "the label map was not made on this series"
            )
        a_s = 3 - a_c - a_r
        s_c, s_r = int(ints[1][a_c]), int(ints[2][a_r])
        for axis, step, count in ((a_c, s_c, columns), (a_r, s_r, rows), (a_s, 1, 1)):
            lo, hi = sorted((int(o[axis]), int(o[axis]) + step * (count - 1)))
            if lo < 0 or hi >= shape[axis]:
                raise InputError(
                    f"{where}: frame {n + 1} reaches voxel {lo}..{hi} on axis {axis} of a grid of {tuple(shape)}"
                )
        index: list[Any] = [None, None, None]
        index[a_c] = _axis_slice(int(o[a_c]), s_c, columns)
        index[a_r] = _axis_slice(int(o[a_r]), s_r, rows)
        index[a_s] = int(o[a_s])
        out.append(FrameMap(tuple(index), transposed=a_c < a_r))  # type: ignore[arg-type]
    return out


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


def _category_and_type(name: str) -> tuple[Any, Any]:
    """SNOMED CT codes for a label name pydicom knows (``"liver"``, ``"spleen"``, ``"left kidney"``,
    ``"kidney_left"``, ...): (Anatomical Structure, the organ); otherwise (Tissue, Tissue)."""
    from pydicom.sr.codedict import codes

    words = name.replace("_", " ").replace("-", " ").split()
    candidates = ["".join(w.capitalize() for w in words)]
    if len(words) == 2 and words[1].lower() in ("left", "right"):  # kidney_left -> LeftKidney
        candidates.append(words[1].capitalize() + words[0].capitalize())
    for key in candidates:
        try:
            code = getattr(codes.SCT, key)
        except AttributeError:
            continue
        return codes.SCT.AnatomicalStructure, code
    return codes.SCT.Tissue, codes.SCT.Tissue


def _segment_names(names: Mapping[int, str] | None, top: int, where: object) -> dict[int, str]:
    """Segment number -> name for ``1 .. max(top, named)`` (``"label N"`` where unnamed), each name
    checked by :func:`check_long_string` (refused, never cut)."""
    check_segment_names(names, where)
    names = dict(names or {})
    top = max([top, *names]) if names else top
    return {v: str(names.get(v) or f"label {v}") for v in range(1, top + 1)}


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


@contextlib.contextmanager
def _quiet_text() -> Iterator[None]:
    """pydicom's warnings about a file's text (an escape sequence or a byte its character set does not
    know) silenced: they would print on stderr, beside the one line a refusal is; what the text holds
    is checked where it matters (:func:`segment_names`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _open_seg(path: Path) -> Any:
    hd = _require()
    try:
        with _quiet_text():
            return hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - anything highdicom cannot parse is a bad file here
        raise InputError(f"{path}: not a readable DICOM Segmentation ({type(exc).__name__}: {exc})") from None


def segment_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Segment number -> SegmentLabel of the SEG at ``path``, from its header alone (no frame is read
    or parsed); ``{}`` for a DICOM file that is not a Segmentation. A SegmentLabel is a label name:
    one that :func:`hiend_data.labels.check_label_name` refuses (empty, control characters such as
    ESC) is an InputError naming the file and the segment, as in a dataset.json."""
    from .labels import check_label_name

    path = Path(path)
    ds = _seg_header(path)
    if ds is None:
        return {}
    names = {}
    items = list(ds.get("SegmentSequence") or [])
    numbers = [int(item.get("SegmentNumber", 0)) for item in items]
    with _quiet_text():
        for number, item in zip(numbers, items, strict=True):
            if number in names:  # as reading its pixels refuses it (_described_segments)
                raise InputError(
                    f"{path}: segment number {number} is described {numbers.count(number)} times"
                )
            names[number] = check_label_name(
                str(item.get("SegmentLabel", "")), number, f"{path}: SegmentLabel"
            )
    return names


def is_segmentation(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` is a DICOM Segmentation (BINARY, FRACTIONAL or LABELMAP), from its
    header alone; False for folders, zips and other files."""
    path = Path(path)
    return path.is_file() and is_dicom_file(path) and _seg_header(path) is not None


def _seg_header(path: Path) -> Any:
    """The file's header (no pixels) when it is a Segmentation, else None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - anything pydicom cannot parse is a bad file here
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    return ds if str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES else None


def _check_labelled(path: Path, seg: Any) -> set[int]:
    """BINARY or LABELMAP, frames whose decoding fits the volume limit (checked from the header,
    before any pixel is decoded: a small compressed file may claim any size), and segments that
    decode without loss (:func:`_described_segments`). Returns the described segment numbers."""
    frames = int(seg.get("NumberOfFrames", 1) or 1)
    check_volume_bytes((int(seg.Rows), int(seg.Columns), frames), 1, path, "Segmentation frames hold")
    kind = str(seg.get("SegmentationType", ""))
    if kind not in ("BINARY", "LABELMAP"):
        raise InputError(
            f"{path}: a {kind} DICOM Segmentation (probabilities); hiend reads BINARY and LABELMAP ones"
        )
    return _described_segments(path, seg, kind)


def _is_background(seg: Any, item: Any) -> bool:
    """Whether the LABELMAP segment ``item`` (number 0) is the background: PixelPaddingValue 0 (what
    highdicom writes) or the DCM Background code as its property type."""
    if "PixelPaddingValue" in seg and int(seg.PixelPaddingValue) == 0:
        return True
    kind = _first(item, "SegmentedPropertyTypeCodeSequence")
    return kind is not None and (
        str(kind.get("CodeValue", "")),
        str(kind.get("CodingSchemeDesignator", "")),
    ) == (BACKGROUND_CODE)


def _described_segments(path: Path, seg: Any, kind: str) -> set[int]:
    """The segment numbers SegmentSequence describes (a LABELMAP's background 0 left out), from the
    header alone. Refused: a number given twice, a segment numbered 0 (or below) other than a
    LABELMAP's background, a LABELMAP whose background value is not 0, and BINARY frames of a segment
    not described: each would decode as background or into another segment."""
    items = list(seg.get("SegmentSequence") or [])
    numbers = [int(item.get("SegmentNumber", 0)) for item in items]
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    if twice:
        raise InputError(f"{path}: segment number {twice[0]} is described {numbers.count(twice[0])} times")
    if kind == "LABELMAP" and int(seg.get("PixelPaddingValue", 0) or 0) != 0:
        raise InputError(
            f"{path}: LABELMAP background value {int(seg.PixelPaddingValue)}; hiend reads label maps "
            "whose background is 0"
        )
    for number, item in zip(numbers, items, strict=True):
        if number < 1 and not (kind == "LABELMAP" and number == 0 and _is_background(seg, item)):
            raise InputError(
                f"{path}: segment {str(item.get('SegmentLabel', ''))!r} has number {number}; segment "
                "numbers start at 1 (0 is background, so its voxels would be lost)"
            )
    described = {n for n in numbers if n >= 1}
    if kind == "BINARY":
        shared = _first(seg, "SharedFunctionalGroupsSequence")
        common = _first(shared, "SegmentIdentificationSequence") if shared is not None else None
        referenced = set()
        for n, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence") or [], 1):
            ident = _first(frame, "SegmentIdentificationSequence") or common
            if ident is None or "ReferencedSegmentNumber" not in ident:
                raise InputError(f"{path}: frame {n} does not say which segment it holds")
            referenced.add(int(ident.ReferencedSegmentNumber))
        if common is not None and "ReferencedSegmentNumber" in common:
            referenced.add(int(common.ReferencedSegmentNumber))
        _refuse_undescribed(path, referenced - described, described, "frames of segment")
    return described


def _refuse_undescribed(path: Path, stray: set[int], described: set[int], what: str) -> None:
    if stray:
        known = ", ".join(map(str, sorted(described))) or "none"
        raise InputError(
            f"{path}: {what} {min(stray)}, which SegmentSequence does not describe (described: {known}); "
            "its voxels would be lost"
        )


def _check_values(path: Path, seg: Any, array: np.ndarray, described: set[int]) -> None:
    """A LABELMAP's pixel values other than 0 must be described segments (BINARY frames were checked
    from the header: a frame's pixels are 0/1)."""
    if str(seg.get("SegmentationType", "")) != "LABELMAP" or not array.size:
        return
    counts = np.bincount(array.reshape(-1).astype(np.int64, copy=False))
    present = {int(v) for v in np.flatnonzero(counts) if v > 0}
    _refuse_undescribed(path, present - described, described, "pixel value")


def check_references(
    path: str | os.PathLike[str], series_uid: str, frame_of_reference_uid: str, image: object
) -> None:
    """Refuse (InputError naming the SEG at ``path``, its UIDs and the image's) a SEG that is not of
    the image ``image`` (series ``series_uid``, frame of reference ``frame_of_reference_uid``): its
    ReferencedSeriesSequence names other series, or its FrameOfReferenceUID is another. What the SEG
    leaves out is not compared (ReferencedSeriesSequence is conditional; a grid check follows anyway).
    A SEG written on series X labels X: on another series Y of the same grid (another phase or
    reconstruction) its voxels would be taken as Y's label without a word."""
    path = Path(path)
    ds = _seg_header(path)
    if ds is None:
        return
    refs = [
        str(item.SeriesInstanceUID)
        for item in ds.get("ReferencedSeriesSequence") or []
        if "SeriesInstanceUID" in item
    ]
    if refs and series_uid not in refs:
        raise InputError(
            f"{path}: segments series {', '.join(refs)}, not series {series_uid} of the image {image}"
        )
    seg_for = str(ds.get("FrameOfReferenceUID", "") or "")
    if seg_for and frame_of_reference_uid and seg_for != frame_of_reference_uid:
        raise InputError(
            f"{path}: frame of reference {seg_for}, not {frame_of_reference_uid} of the image {image}"
        )


def read_seg(path: str | os.PathLike[str], dataset: Any = None) -> Any:
    """A SEG file as a nibabel image: ``[X, Y, Z]`` uint8/uint16 segment numbers (overlaps refused) on
    the SEG's own grid (array axes: columns, rows, slices of its frames, in slice order; RAS+ affine).

    The grid spans the SEG's frames along the slice normal only (frames left out in between are
    background); ``hiend-eval score`` places it on the reference grid. ``dataset`` is unused (the file
    is parsed by highdicom). A segment that would decode as background (numbered 0, not described,
    described twice: the module docstring's "Segments") is an InputError naming the file and number."""
    import nibabel as nib

    del dataset
    path = Path(path)
    seg = _open_seg(path)
    described = _check_labelled(path, seg)
    try:
        volume = seg.get_volume(combine_segments=True)
    except (ValueError, RuntimeError) as exc:
        raise InputError(
            f"{path}: the Segmentation's frames do not form a regular volume ({exc}); "
            "decode it against its source series instead"
        ) from None
    array = np.asarray(volume.array)  # [slice, row, column]
    _check_values(path, seg, array, described)
    top = int(array.max()) if array.size else 0
    array = np.ascontiguousarray(np.transpose(array, (2, 1, 0))).astype(
        np.uint8 if top < 256 else np.uint16, copy=False
    )
    # highdicom's affine maps (slice, row, column) to LPS; hiend's array is (column, row, slice), RAS
    swap = np.eye(4)[[2, 1, 0, 3]]
    affine = LPS_FROM_RAS @ np.asarray(volume.affine, dtype=np.float64) @ swap
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def decode_on_source(
    path: str | os.PathLike[str], source: Sequence[Any], affine: np.ndarray, shape: Sequence[int]
) -> np.ndarray:
    """The SEG at ``path`` as a label map ``[X, Y, Z]`` (segment numbers) on the grid of its source
    series (``source``: :func:`hiend_data.dicom.series_headers`; ``affine``/``shape``: the grid
    ``load_volume`` gives that series), through each frame's referenced source image (or frame).
    The same segment checks as :func:`read_seg`."""
    path = Path(path)
    seg = _open_seg(path)
    described = _check_labelled(path, seg)
    datasets = list(source)
    planes = frame_planes(datasets)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    index = frame_voxels(planes, affine, shape, rows, columns, where=path)
    try:
        if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
            frames = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=datasets[0].SOPInstanceUID,
                source_frame_numbers=list(range(1, len(planes) + 1)),
                combine_segments=True,
            )
        else:
            frames = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets], combine_segments=True
            )
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{path}: does not reference this series' images ({exc})") from None
    _check_values(path, seg, frames, described)
    top = int(frames.max()) if frames.size else 0
    out = np.zeros(tuple(shape), dtype=np.uint8 if top < 256 else np.uint16)
    for frame, m in zip(frames, index, strict=True):
        m.put(out, frame)
    return out
