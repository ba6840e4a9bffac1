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
