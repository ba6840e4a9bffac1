"""Reading DICOM Segmentations: their segment names (:func:`segment_names`), whether a file is one
(:func:`is_segmentation`), which series they label (:func:`check_references`), and their label maps
on their own grid (:func:`read_seg`) or on the source series' (:func:`decode_on_source`), each segment
checked to decode without loss (see :mod:`hiend_data.dicom_seg`, "Segments")."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..limits import check_volume_bytes
from ..naming import is_dicom_file
from .frames import LPS_FROM_RAS, _first, frame_planes, frame_voxels
from .rules import BACKGROUND_CODE, SEG_SOP_CLASSES, _require


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
    from ..labels import check_label_name

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
    described twice: :mod:`hiend_data.dicom_seg`'s "Segments") is an InputError naming the file and number."""
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
