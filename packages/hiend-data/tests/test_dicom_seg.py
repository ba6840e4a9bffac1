"""DICOM-SEG integrity (issue 18): which series a SEG labels, segment numbers that would decode as
background, and segment names a DICOM Long String cannot hold as written.

The series here are tiny synthetic ones (12 x 10 x 5 voxels) written with pydicom; the SEGs are
hiend's own (``write_seg``), then edited with pydicom into what other tools or hands may produce.
``series()`` and ``seg_of()`` are also used by ``tests/hostile/test_dicom_seg.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("dicom2nifti")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from hiend_data import InputError, load_volume, save_volume  # noqa: E402
from hiend_data.dicom import series_headers  # noqa: E402
from hiend_data.dicom_seg import check_segment_names, decode_on_source, segment_names, write_seg  # noqa: E402
from hiend_data.io import load_label  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SHAPE = (12, 10, 5)


def series(
    folder: Path,
    *,
    series_uid: str | None = None,
    frame_uid: str | None = None,
    charset: str | None = None,
    patient: str = "Test^Hiend",
) -> Path:
    """A 12 x 10 x 5 CT series at 2 x 2 x 3 mm (axial, RAS array axes -> LPS patient axes), one file
    per slice; ``series_uid`` / ``frame_uid`` fixed when given (a fresh UID otherwise)."""
    study, frame_uid, series_uid = generate_uid(), frame_uid or generate_uid(), series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(SHAPE[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame_uid
        if charset:
            ds.SpecificCharacterSet = charset
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "hiend", patient
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]  # RAS x, y -> LPS -x, -y: rows/columns flipped
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 3.0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full((SHAPE[1], SHAPE[0]), 1000 + 10 * k, np.uint16).tobytes()
        ds.save_as(folder / f"IM{k:03d}", enforce_file_format=True)
    return folder


def labels_of(shape: tuple[int, int, int]) -> np.ndarray:
    """Two blocks: label 1 in slices 1..2, label 2 in slices 2..3."""
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 2:5, 1:3] = 1
    labels[7:10, 5:8, 2:4] = 2
    return labels


def seg_of(folder: Path, out: Path, seg_type: str = "binary", names=None) -> Path:
    """hiend's SEG (``liver``, ``spleen``) of the series at ``folder``."""
    vol = load_volume(folder)
    return write_seg(
        labels_of(vol.shape), vol.affine, series_headers(folder), out, names or {1: "liver", 2: "spleen"},
        seg_type=seg_type,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return series(tmp_path_factory.mktemp("seg") / "ct")


# ----------------------------------------------------------------------- which series a SEG labels


def test_seg_of_another_series_refused_as_its_label(ct, tmp_path):
    """A SEG written on series X, given as the label of series Y of the same grid: refused, naming the
    SEG and both series UIDs (or both frames of reference); of X itself it loads; with a NIfTI image
    there is nothing to compare and the grid decides."""
    seg = seg_of(ct, tmp_path / "seg_x.dcm")
    x = series_headers(ct)[0]
    image = load_volume(ct)
    assert np.array_equal(load_label(seg, like=image).array, labels_of(image.shape))

    other = load_volume(series(tmp_path / "y"))
    y = series_headers(tmp_path / "y")[0]
    with pytest.raises(InputError) as err:
        load_label(seg, like=other)
    msg = str(err.value)
    assert "seg_x.dcm" in msg and x.SeriesInstanceUID in msg and y.SeriesInstanceUID in msg

    # the same series UID (a copy) in another frame of reference
    moved = load_volume(series(tmp_path / "z", series_uid=x.SeriesInstanceUID))
    with pytest.raises(InputError, match="frame of reference") as err:
        load_label(seg, like=moved)
    assert x.FrameOfReferenceUID in str(err.value)

    nifti = save_volume(tmp_path / "y.nii.gz", other.array, like=other)
    assert load_label(seg, like=load_volume(nifti)).array.sum() == labels_of(image.shape).sum()


def test_seg_without_referenced_series_checks_the_frame_of_reference_alone(ct, tmp_path):
    seg = seg_of(ct, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(seg)
    del ds.ReferencedSeriesSequence  # conditional in the standard: nothing to compare then
    ds.save_as(seg)
    same_frame = series(tmp_path / "y", frame_uid=series_headers(ct)[0].FrameOfReferenceUID)
    assert load_label(seg, like=load_volume(same_frame)).array.max() == 2
    with pytest.raises(InputError, match="frame of reference"):
        load_label(seg, like=load_volume(series(tmp_path / "z")))


# ------------------------------------------------------------------ segment numbers (nothing lost)


def _edit(path: Path, out: Path, edit) -> Path:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(out)
    return out


def _renumber_frames(ds, old: int, new: int) -> None:
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ident = frame.SegmentIdentificationSequence[0]
        if ident.ReferencedSegmentNumber == old:
            ident.ReferencedSegmentNumber = new


def _binary_zero(ds) -> None:
    ds.SegmentSequence[1].SegmentNumber = 0
    _renumber_frames(ds, 2, 0)


def _binary_undescribed(ds) -> None:
    _renumber_frames(ds, 2, 7)


def _binary_twice(ds) -> None:
    ds.SegmentSequence[1].SegmentNumber = 1


def _labelmap_undescribed(ds) -> None:
    del ds.SegmentSequence[2]  # spleen's description gone, its pixels (value 2) still there


def _labelmap_zero_not_background(ds) -> None:
    del ds.PixelPaddingValue
    liver = copy.deepcopy(ds.SegmentSequence[1])
    liver.SegmentNumber = 0
    ds.SegmentSequence[0] = liver  # "liver" numbered 0: pixel value 0 means liver


@pytest.mark.parametrize(
    ("seg_type", "edit", "fragment"),
    [
        ("binary", _binary_zero, "'spleen' has number 0"),
        ("binary", _binary_undescribed, "frames of segment 7, which SegmentSequence does not describe"),
        ("binary", _binary_twice, "segment number 1 is described 2 times"),
        ("labelmap", _labelmap_undescribed, "pixel value 2, which SegmentSequence does not describe"),
        ("labelmap", _labelmap_zero_not_background, "'liver' has number 0"),
    ],
)
def test_segments_that_would_decode_as_background_refused(ct, tmp_path, seg_type, edit, fragment):
    """Renumbered 0, frames or pixels of a segment not described, a number given twice: refused by the
    SEG read alone (load_volume, what hiend-eval score reads) and on its source (decode_on_source),
    naming the file and the number, instead of a label map missing that segment."""
    good = seg_of(ct, tmp_path / "good.dcm", seg_type)
    bad = _edit(good, tmp_path / "bad.dcm", edit)
    vol = load_volume(ct)
    for read in (
        lambda: load_volume(bad),
        lambda: decode_on_source(bad, series_headers(ct), vol.affine, vol.shape),
    ):
        with pytest.raises(InputError, match=fragment) as err:
            read()
        assert str(err.value).startswith(str(bad))
    # hiend's own LABELMAP describes 0 as its background: read as it is
    assert np.array_equal(
        decode_on_source(good, series_headers(ct), vol.affine, vol.shape), labels_of(vol.shape)
    )


# --------------------------------------------------------------------------- segment names (text)


def test_non_ascii_names_round_trip_as_utf8(tmp_path):
    """``Leber–Läsion 肝`` on a Latin-1 series: the SEG is UTF-8 and pydicom reads the exact name (and
    the patient's name the source had); ASCII names keep the source's character set."""
    folder = series(tmp_path / "ct", charset="ISO_IR 100", patient="Müller^Jörg")
    name = "Leber–Läsion 肝"
    out = seg_of(folder, tmp_path / "seg.dcm", names={1: name, 2: "x" * 64})
    ds = pydicom.dcmread(out)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert [str(s.SegmentLabel) for s in ds.SegmentSequence] == [name, "x" * 64]
    assert str(ds.PatientName) == "Müller^Jörg"
    assert segment_names(out) == {1: name, 2: "x" * 64}
    plain = pydicom.dcmread(seg_of(folder, tmp_path / "plain.dcm"))
    assert plain.SpecificCharacterSet == "ISO_IR 100" and str(plain.PatientName) == "Müller^Jörg"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("liver\\spleen", "backslash"),
        ("liver\nspleen", "control or format character"),
        ("y" * 65, "65 characters"),
        ("liver ", "begins or ends with a blank"),
    ],
)
def test_names_a_long_string_cannot_hold_refused_before_writing(ct, tmp_path, name, why):
    with pytest.raises(InputError, match=why) as err:
        seg_of(ct, tmp_path / "seg.dcm", names={1: "liver", 2: name})
    assert "label 2 name" in str(err.value) and repr(name)[:40] in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=why):
        check_segment_names({2: name}, "labels.json")


def test_description_a_long_string_cannot_hold_refused(ct, tmp_path):
    vol = load_volume(ct)
    with pytest.raises(InputError, match=r"description 'a\\\\b' holds a backslash"):
        write_seg(
            labels_of(vol.shape), vol.affine, series_headers(ct), tmp_path / "s.dcm", description="a\\b"
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, code",
    [
        ("kidney_right", "9846003"),
        ("right kidney", "9846003"),
        ("kidney_left", "18639004"),
        ("lung_left", "44029006"),
        ("lungs", "39607008"),
        ("spine", "421060004"),
        ("tumour", "85756007"),
    ],
)
def test_segment_codes_name_paired_organs_by_side_and_plurals_by_organ(name, code):
    from hiend_data.dicom_seg.writer import _category_and_type

    category, kind = _category_and_type(name)
    assert kind.value == code and kind.scheme_designator == "SCT"
    assert category.value == (
        "85756007" if code == "85756007" else "91723000"
    )  # Tissue | Anatomical structure
