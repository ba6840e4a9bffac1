"""Hostile DICOM series (issue 18): folders and zips that used to give a silently wrong volume.

Symlinked slices and folders, slices without pixel data, mirroring or non-finite geometry, slices off
the affine's positions, two patients under one SeriesInstanceUID, zip bombs. Each refusal: exit 2, one
line naming the folder and the file at fault, no traceback; what is accepted is read whole.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile_cli import one_line_exit_2, run

pytest.importorskip("dicom2nifti")
pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _slice(folder: Path, name: str, z: float, uid: str, *, patient: str = "A", study: str = "1.2.3.4",
           frame: str = "1.2.3.5", value: int = 0, **tags) -> Path:  # fmt: skip
    """One 4 x 4 CT slice at (0, 0, z), axial, 1 mm pixels; ``tags`` override any attribute
    (``PixelData=None`` leaves the pixel data out)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, uid, frame
    ds.Modality, ds.PatientID, ds.ImageType = "CT", patient, ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = int(round(z * 10)) + 10000
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, f"{z:.4f}"], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 3
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.full((4, 4), 1024 + value, np.uint16).tobytes()
    for key, v in tags.items():
        if v is None:
            delattr(ds, key)
        else:
            setattr(ds, key, v)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


def _series(folder: Path, zs, uid: str | None = None, **kw) -> str:
    uid = uid or generate_uid()
    for k, z in enumerate(zs):
        _slice(folder, f"IM{k:04d}", z, uid, value=k, **kw)
    return uid


def _inspect(path: Path) -> dict:
    res = run("hiend-data", "inspect", path, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- symlinks


def test_a_symlinked_subfolder_is_read_and_a_link_loop_ends(tmp_path):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8)])
    elsewhere = tmp_path / "elsewhere"
    for k in range(8, 12):
        _slice(elsewhere, f"IM{k:04d}", 3.0 * k, uid, value=k)
    os.symlink(elsewhere, series / "more")
    os.symlink("..", series / "more_loop")  # a link to the series' own parent: walked once
    info = _inspect(series)
    assert info["shape"][2] == 12 and (info["min"], info["max"]) == (0.0, 11.0)


def test_a_symlinked_slice_of_another_patient_is_refused(tmp_path):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(12)], patient="A")
    other = _slice(tmp_path / "patient_b", "IMB", 36.0, uid, patient="B")
    os.symlink(other, series / "IM9999")
    one_line_exit_2(
        run("hiend-data", "inspect", series), str(series), "PatientID 'A' (IM0000) and 'B' (IM9999)"
    )


def test_a_broken_symlink_is_refused(tmp_path):
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(6)])
    os.symlink(tmp_path / "gone", series / "IM0006")
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), "IM0006 is a broken symbolic link")


# ------------------------------------------------------------------------------ missing pixel data


@pytest.mark.parametrize("which", [0, 5, 11])
def test_a_slice_without_pixel_data_is_refused_wherever_it_sits(tmp_path, which):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(12) if k != which])
    _slice(series / "sub", "EMPTY", 3.0 * which, uid, PixelData=None)
    one_line_exit_2(
        run("hiend-data", "inspect", series),
        str(series),
        "sub/EMPTY: an image of the series without pixel data",
    )


# ----------------------------------------------------------------------------------- bad geometry


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(
    ("tag", "value", "says"),
    [
        ("PixelSpacing", [-3, -3], "PixelSpacing [-3.0, -3.0] must be > 0"),
        ("PixelSpacing", [0, 1], "PixelSpacing [0.0, 1.0] must be > 0"),
        ("PixelSpacing", ["nan", 1], "PixelSpacing [nan, 1.0] is not 2 finite numbers"),
        (
            "ImageOrientationPatient",
            [2, 0, 0, 0, 2, 0],
            "ImageOrientationPatient [2.0, 0.0, 0.0, 0.0, 2.0, 0.0] is not two unit vectors at right angles",
        ),
        (
            "ImageOrientationPatient",
            [1, 0, 0, 1, 0, 0],
            "ImageOrientationPatient [1.0, 0.0, 0.0, 1.0, 0.0, 0.0] is not two unit",
        ),
        (
            "ImagePositionPatient",
            [0, "inf", 6],
            "ImagePositionPatient [0.0, inf, 6.0] is not 3 finite numbers",
        ),
    ],
)
def test_mirroring_or_non_finite_geometry_is_refused(tmp_path, tag, value, says):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8) if k != 2])
    _slice(series, "BAD", 6.0, uid, **{tag: value})
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), f"BAD: {says}")


# ------------------------------------------------------------------------------ slice positions


def test_gaps_drifting_from_the_affine_are_refused_naming_the_worst_slice(tmp_path):
    """3.0 mm, then 19 x 2.77, then 19 x 3.25 (each gap within 5 % + 0.1 mm of the one before): the
    affine's 3.0097 mm step puts slice 21 4.56 mm from its ImagePositionPatient."""
    zs = np.concatenate(
        [[0.0, 3.0], 3.0 + 2.77 * np.arange(1, 20), 3.0 + 2.77 * 19 + 3.25 * np.arange(1, 20)]
    )
    series = tmp_path / "series"
    _series(series, zs)
    line = one_line_exit_2(run("hiend-data", "inspect", series), str(series), "uneven slice spacing: IM0020 (slice 21 of 40) lies 4.56 mm", "tolerance of 0.301 mm")  # fmt: skip
    assert "slice gaps 2.77 to 3.25 mm" in line


def test_a_slice_off_the_stack_line_is_refused(tmp_path):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8) if k != 4])
    _slice(series, "DRIFT", 12.0, uid, ImagePositionPatient=[0.8, 0, 12])  # in-plane, 0.8 mm
    one_line_exit_2(
        run("hiend-data", "inspect", series),
        "DRIFT (slice 5 of 8) lies 0.8 mm",
        "(0 mm along the slice normal)",
    )


# ------------------------------------------------------------------------ two patients, one series


def test_two_patients_under_one_series_uid_are_refused(tmp_path):
    series = tmp_path / "series"
    uid = _series(series / "a", [3.0 * k for k in range(12)], patient="A")  # z 0..33
    _series(series / "b", [36 + 3.0 * k for k in range(12)], uid, patient="B")  # z 36..69
    one_line_exit_2(
        run("hiend-data", "inspect", series), str(series), "PatientID 'A' (a/IM0000) and 'B' (b/IM0000)"
    )


@pytest.mark.parametrize(
    ("tag", "value", "says"),
    [
        ("StudyInstanceUID", "9.9.9", "StudyInstanceUID '1.2.3.4' (IM0000) and '9.9.9' (OTHER)"),
        ("FrameOfReferenceUID", "9.9.8", "FrameOfReferenceUID '1.2.3.5' (IM0000) and '9.9.8' (OTHER)"),
        ("PixelSpacing", [0.8, 0.8], "PixelSpacing [1, 1] (IM0000) and [0.8, 0.8] (OTHER)"),
    ],
)
def test_slices_disagreeing_on_study_frame_or_spacing_are_refused(tmp_path, tag, value, says):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8) if k != 3])
    _slice(series, "OTHER", 9.0, uid, **{tag: value})
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), says)


# ---------------------------------------------------------------------------------------- zips


def _zip_of(series: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"series/{f.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def test_a_zip_declaring_more_than_the_volume_limit_is_refused(tmp_path):
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(6)])
    archive = _zip_of(series, tmp_path / "s.zip", {"series/padding.bin": b"\0" * 4 * 2**20})  # 4 MiB -> 4 KB
    assert archive.stat().st_size < 64 * 1024
    assert _inspect(archive)["shape"][2] == 6  # within the default limit
    res = run("hiend-data", "inspect", archive, env={"HIEND_MAX_VOLUME_BYTES": str(2 * 2**20)})
    one_line_exit_2(
        res, str(archive), "members declare 4.0 MiB unpacked", "limit of 2.0 MiB", "HIEND_MAX_VOLUME_BYTES"
    )


def test_a_zip_bomb_member_is_refused_from_its_compression_ratio(tmp_path):
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(6)])
    archive = _zip_of(series, tmp_path / "bomb.zip", {"series/IM9999": b"\0" * 20 * 2**20})  # 20 MiB -> 20 KB
    one_line_exit_2(
        run("hiend-data", "inspect", archive),
        str(archive),
        "zip member 'series/IM9999' inflates",
        "a zip bomb",
    )


def test_a_zip_member_lying_about_its_size_is_refused(tmp_path):
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(6)])
    archive = _zip_of(series, tmp_path / "liar.zip", {"series/zz": b"\0" * 2**20})
    raw = bytearray(archive.read_bytes())
    # the central directory's entry of the last member: uncompressed size (offset 24) says 1000 bytes
    cd = raw.rfind(b"PK\x01\x02")
    assert raw[cd + 46 : cd + 46 + 9] == b"series/zz"
    raw[cd + 24 : cd + 28] = struct.pack("<I", 1000)
    archive.write_bytes(bytes(raw))
    # zipfile stops inflating at the declared size, then the CRC fails: never more than declared on disk
    one_line_exit_2(run("hiend-data", "inspect", archive), str(archive), "Bad CRC-32 for file 'series/zz'")


def test_a_zip_with_two_members_of_one_name_is_refused(tmp_path):
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(6)])
    archive = _zip_of(series, tmp_path / "twice.zip")
    with zipfile.ZipFile(archive, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.write(series / "IM0002", "series/IM0001")
    one_line_exit_2(
        run("hiend-data", "inspect", archive), str(archive), "two zip entries named 'series/IM0001'"
    )


# ------------------------------------------------------------------------ rescale, slice by slice


def test_each_slice_is_rescaled_with_its_own_slope_and_intercept(tmp_path):
    """Stored value 100 everywhere; slice k's slope and intercept make it HU k exactly."""
    series, uid = tmp_path / "series", generate_uid()
    for k, slope in enumerate([1, 2, 0.5, 4, 1, 0.25, 2, 1]):
        _slice(series, f"IM{k:04d}", 3.0 * k, uid, RescaleSlope=slope, RescaleIntercept=k - 100 * slope,
               PixelData=np.full((4, 4), 100, np.uint16).tobytes())  # fmt: skip
    info = _inspect(series)
    assert info["label_values"] == list(range(8)) and info["mean"] == 3.5


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(
    ("tags", "says"),
    [
        ({"RescaleSlope": 0}, "BAD: RescaleSlope 0 / RescaleIntercept -1024: the slope must be a finite non-zero"),
        ({"RescaleSlope": "nan"}, "BAD: RescaleSlope nan / RescaleIntercept -1024"),
        ({"RescaleIntercept": "inf"}, "BAD: RescaleSlope 1 / RescaleIntercept inf"),
        ({"RescaleIntercept": None}, "BAD has RescaleSlope but no RescaleIntercept"),
        ({"RescaleSlope": None}, "BAD has RescaleIntercept but no RescaleSlope"),
        ({"RescaleSlope": None, "RescaleIntercept": None},
         "slices rescaled differently: BAD has no rescale (neither RescaleSlope nor a LUT), IM0000 has"),
    ],
)  # fmt: skip
def test_a_slice_with_an_unusable_or_missing_rescale_is_refused(tmp_path, tags, says):
    """Each of these used to give a slice of -1024 (slope 0) or of stored values among HU."""
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8) if k != 7])  # the last slice: no gap to see
    _slice(series, "BAD", 21.0, uid, value=7, **tags)
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), says)


# ------------------------------------------------------------ orientation within the volume's plane


def _tilted(degrees: float) -> list[float]:
    a = np.radians(degrees)
    return [1, 0, 0, 0, float(np.cos(a)), float(np.sin(a))]


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        ({"ImageOrientationPatient": _tilted(0.5)}, "in a plane 0.5 degrees from the volume's"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, -1, 0]}, "ImageOrientationPatient [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]"),
        ({"ImageOrientationPatient": [0, 1, 0, -1, 0, 0]}, "ImageOrientationPatient [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "flagged as a localizer"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("end", [0, 7])
def test_an_end_slice_in_the_volumes_plane_but_set_apart_is_refused(tmp_path, tags, says, end):
    """A first or last slice tilted by 0.5 degrees, mirrored, rotated in plane or flagged LOCALIZER
    used to be dropped as a scout: a volume one slice short, no gap to see."""
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8) if k != end])
    _slice(series, "ODD", 3.0 * end, uid, value=end, **tags)
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), "ODD: ", says, "not left out silently")


def test_a_scout_in_another_plane_is_still_left_out(tmp_path):
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8)])
    _slice(series, "SCOUT", 60.0, uid, value=50, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])  # coronal
    info = _inspect(series)
    assert info["shape"][2] == 8 and info["max"] == 7.0


# -------------------------------------------------------------------- one SOPInstanceUID, two files


def test_an_identical_copy_of_a_slice_is_read_once(tmp_path):
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(8)])
    (series / "IM0003 (1)").write_bytes((series / "IM0003").read_bytes())
    info = _inspect(series)
    assert info["shape"][2] == 8 and info["label_values"] == list(range(8))


@pytest.mark.parametrize("change", ["pixels", "position"])
def test_two_different_files_with_one_sop_instance_uid_are_refused(tmp_path, change):
    """A copy of the last slice edited (other pixels at its place, or moved one step on: that one
    used to be read as a ninth slice)."""
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(8)])
    ds = pydicom.dcmread(series / "IM0007")
    if change == "pixels":
        ds.PixelData = np.full((4, 4), 1099, np.uint16).tobytes()
    else:
        ds.ImagePositionPatient = [0, 0, 24]
    ds.save_as(series / "IM0008")
    one_line_exit_2(
        run("hiend-data", "inspect", series),
        str(series),
        "IM0007 and IM0008: two different files with one SOPInstanceUID",
    )


# ------------------------------------------------------------------------ pixel data as declared


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("short", "ODD: PixelData holds 24 bytes, expected 32"),
        ("long", "ODD: PixelData holds 40 bytes, expected 32"),
        ("cut", "IM0003: PixelData holds 4508 bytes, expected 4608"),
        ("float", "ODD: float pixel data (FloatPixelData / DoubleFloatPixelData) is not read"),
        ("colour", "ODD: SamplesPerPixel 3 (a colour image)"),
    ],
)
def test_a_slice_whose_pixel_data_is_not_what_its_header_says_is_refused(tmp_path, fault, says):
    """A slice cut short (in its PixelData, or the file itself: 48 x 48 so the pixel data is read
    lazily), one longer than Rows x Columns (a lying header), float pixel data (dicom2nifti used to
    drop the slice: a volume one short), a colour slice."""
    series = tmp_path / "series"
    big = {"Rows": 48, "Columns": 48, "PixelData": np.full((48, 48), 1024, np.uint16).tobytes()}
    uid = _series(series, [3.0 * k for k in range(8) if k != 3], **(big if fault == "cut" else {}))
    odd = {
        "short": {"PixelData": np.full((4, 3), 1027, np.uint16).tobytes()},
        "long": {"PixelData": np.full((4, 5), 1027, np.uint16).tobytes()},
        "cut": big,
        "float": {"PixelData": None, "FloatPixelData": np.full((4, 4), 3, np.float32).tobytes(),
                  "BitsAllocated": 32, "BitsStored": None, "HighBit": None, "PixelRepresentation": None},
        "colour": {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0,
                   "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7,
                   "PixelData": np.zeros((4, 4, 3), np.uint8).tobytes()},
    }[fault]  # fmt: skip
    f = _slice(series, "IM0003" if fault == "cut" else "ODD", 9.0, uid, value=3, **odd)
    if fault == "cut":
        _cut(f, f.stat().st_size - 100)
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), says)


# ------------------------------------------------------------------- two kinds of image, one series


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        ({"Modality": "PT"}, "Modality 'CT' (IM0000) and 'PT' (ODD)"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "SOPClassUID '1.2.840.10008.5.1.4.1.1.2' (IM0000) and '1.2.840.10008.5.1.4.1.1.7' (ODD)"),
    ],
)  # fmt: skip
def test_an_image_of_another_kind_under_the_series_uid_is_refused(tmp_path, tags, says):
    """A PET slice or a Secondary Capture placed one step past the CT: both used to be read as its
    last slice."""
    series = tmp_path / "series"
    uid = _series(series, [3.0 * k for k in range(8)])
    _slice(series, "ODD", 24.0, uid, value=8, **tags)
    one_line_exit_2(
        run("hiend-data", "inspect", series), str(series), "images of two kinds in one series", says
    )


# ------------------------------------------------------------------------------ damaged file meta


def _swap(path: Path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    path.write_bytes(raw.replace(old, new))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("no transfer syntax", "IM0003: TransferSyntaxUID '1.2.840.10008.1.2.1.' is not a transfer syntax"),
        ("claims RLE", "IM0003: cannot read the series"),
        ("header cut", "IM0003: an image without SeriesInstanceUID (a file cut short"),
    ],
)
def test_a_file_whose_meta_lies_or_that_is_cut_in_its_header_is_refused(tmp_path, damage, says):
    """TransferSyntaxUID damaged (used to be a traceback), one claiming RLE for native pixels (the
    message now names the file), a file cut 300 bytes in (used to read as a second series)."""
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(8)])
    f = series / "IM0003"
    if damage == "no transfer syntax":
        _swap(f, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.1.")
    elif damage == "claims RLE":
        _swap(f, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0")
    else:
        _cut(f, 300)
    one_line_exit_2(run("hiend-data", "inspect", series), str(series), says)


# ------------------------------------------------------------------------ zip entries set apart


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("symlink", "zip entry 'series/IM0007' is a symbolic link"),
        ("nested", "zip entry 'series/more.zip' is itself a zip"),
        ("nested, no .zip", "zip entry 'series/IM0007' is itself a zip"),
        ("zip in the folder", "more.zip is a zip of DICOM files among the series' files"),
    ],
)
def test_a_zip_entry_that_would_be_skipped_is_refused(tmp_path, entry, says):
    """The last slice as a symbolic link entry (``zip -y``), inside a zip in the zip, or inside a zip
    in the series folder: each used to be a non-DICOM file, skipped: a volume one slice short."""
    series = tmp_path / "series"
    _series(series, [3.0 * k for k in range(8)])
    last = series / "IM0007"
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.write(last, "series/IM0007")
    if entry == "zip in the folder":
        last.unlink()
        inner.rename(series / "more.zip")
        one_line_exit_2(run("hiend-data", "inspect", series), str(series), says)
        return
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.iterdir())[:-1]:
            zf.write(f, f"series/{f.name}")
        if entry == "symlink":
            info = zipfile.ZipInfo("series/IM0007")
            info.create_system, info.external_attr = 3, (0o120777 << 16)
            zf.writestr(info, "../../elsewhere/IM0007")
        else:
            zf.write(inner, "series/more.zip" if entry == "nested" else "series/IM0007")
    one_line_exit_2(run("hiend-data", "inspect", archive), str(archive), says)


# ---------------------------------------------------------------------- multi-frame rescale, frames


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _multiframe(path: Path, n: int = 6, rescale: list | None = None, **tags) -> Path:
    """One Enhanced CT file of ``n`` 4 x 4 frames 3 mm apart, frame k stored 1024 + k; ``rescale``:
    per-frame ``{RescaleSlope: .., RescaleIntercept: ..}`` (None: that frame has no
    PixelValueTransformationSequence), else one shared rescale (1, -1024)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", generate_uid(), "1.2.3.5"
    ds.Modality, ds.PatientID, ds.ImageType = "CT", "A", ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared, measures, orient = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, orient.ImageOrientationPatient = [1, 1], [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    if rescale is None:
        values = Dataset()
        values.RescaleSlope, values.RescaleIntercept = 1, -1024
        shared.PixelValueTransformationSequence = [values]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(n):
        frame, plane, content = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient, content.InStackPositionNumber = [0, 0, 3.0 * k], k + 1
        frame.PlanePositionSequence, frame.FrameContentSequence = [plane], [content]
        if rescale is not None and rescale[k] is not None:
            values = Dataset()
            for key, v in rescale[k].items():
                setattr(values, key, v)
            frame.PixelValueTransformationSequence = [values]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = (
        np.arange(n, dtype=np.uint16)[:, None, None] + np.full((n, 4, 4), 1024, np.uint16)
    ).tobytes()
    for key, v in tags.items():
        setattr(ds, key, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_each_frame_is_rescaled_with_its_own_slope(tmp_path):
    """Frame 2 (stored 1026) with slope 2, intercept -2040: 12 HU, the others k HU."""
    ok = {"RescaleSlope": 1, "RescaleIntercept": -1024}
    odd = {"RescaleSlope": 2, "RescaleIntercept": -2040}
    path = _multiframe(tmp_path / "mf.dcm", rescale=[ok, ok, odd, ok, ok, ok])
    assert _inspect(path)["label_values"] == [0, 1, 3, 4, 5, 12]


@pytest.mark.parametrize(
    ("frame2", "tags", "says"),
    [
        ({"RescaleSlope": 0, "RescaleIntercept": -1024}, {}, "mf.dcm frame 3: RescaleSlope 0 / RescaleIntercept -1024"),
        ({"RescaleSlope": 1}, {}, "mf.dcm frame 3 has RescaleSlope but no RescaleIntercept"),
        (None, {}, "mf.dcm: frames rescaled differently: frame 1 has PixelValueTransformationSequence, frame 3 has none"),
        ({"RescaleSlope": 1, "RescaleIntercept": -1024}, {"NumberOfFrames": 5, "PixelData": np.zeros((5, 4, 4), np.uint16).tobytes()}, "mf.dcm: NumberOfFrames 5 but 6 per-frame functional groups"),
    ],
)  # fmt: skip
def test_a_frame_with_an_unusable_rescale_or_a_wrong_frame_count_is_refused(tmp_path, frame2, tags, says):
    """Per-frame rescale faults used to give a frame of -1024 or of stored values (the missing
    intercept taken as 0, a frame without one left unscaled)."""
    ok = {"RescaleSlope": 1, "RescaleIntercept": -1024}
    path = _multiframe(tmp_path / "mf.dcm", rescale=[ok, ok, frame2, ok, ok, ok], **tags)
    one_line_exit_2(run("hiend-data", "inspect", path), str(path), says)


def test_a_frame_without_in_stack_position_number_is_refused_by_name(tmp_path):
    """dicom2nifti places frames by it: without it, an AttributeError naming nothing."""
    path = _multiframe(tmp_path / "mf.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[3].FrameContentSequence[0].InStackPositionNumber
    ds.save_as(path, enforce_file_format=True)
    one_line_exit_2(
        run("hiend-data", "inspect", path),
        str(path),
        "frame 4 has a FrameContentSequence without InStackPositionNumber",
    )
