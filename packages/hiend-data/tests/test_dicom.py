"""DICOM input (``hiend-data[dicom]``): series built from the real scans, dcm2niix as the oracle, refusals.

The series are written here with pydicom from ``../shared/data/ct`` (one file per slice, CT Image
Storage, shuffled file names, HU stored with a RescaleIntercept), then read by hiend (dicom2nifti) and
by dcm2niix (an independent C++ converter, run as a subprocess); both must give the same voxels and
affine after being brought to one orientation, and the source NIfTI's voxels at the same world points.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicom2nifti")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, generate_uid  # noqa: E402

from hiend_data import InputError, load_volume  # noqa: E402
from hiend_data.cli import app  # noqa: E402
from hiend_data.discovery import discover  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _meta(sop_class: str, ts: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    return meta


def write_series(
    hu: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    *,
    seed: int = 0,
    slope: float = 1.0,
    desc: str = "AX 3mm",
    series_uid: str | None = None,
    tilt_mm: float = 0.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """One DICOM file per slice of ``hu`` (array axis 0 = columns, 1 = rows, 2 = slices) at ``affine``
    (nibabel RAS+), stored as uint16 with RescaleIntercept / RescaleSlope; random file names.
    ``tilt_mm``: shift slice k by k * tilt_mm along the column direction (a gantry-tilted stack)."""
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)
    sx, sy, sz = (float(np.linalg.norm(lps[:3, i])) for i in range(3))
    row, col = lps[:3, 0] / sx, lps[:3, 1] / sy
    intercept = float(min(-1024, int(hu.min())))
    stored = np.round((hu.astype(np.float64) - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 65536
    stored = stored.astype(np.uint16)
    study, frame = generate_uid(), generate_uid()
    series_uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"IM{n:05d}" for n in random.Random(seed).sample(range(100000), hu.shape[2])]
    for k in range(hu.shape[2]):
        ds = Dataset()
        ds.file_meta = _meta(CT_IMAGE, transfer_syntax)
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.SeriesDescription = "CT", "hiend", "Test^Hiend", desc
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        pos = (lps @ [0, 0, k, 1])[:3] + k * tilt_mm * col
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in [*row, *col]]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{sz:.6f}"
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        if ds.file_meta.TransferSyntaxUID.is_compressed:  # not really compressed: refused before decoding
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([ds.PixelData])
            ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.save_as(folder / names[k], enforce_file_format=True)
    return folder


def _nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


SCANS = {"ras": "body_ct_3mm_ras_30slices.nii.gz", "lps": "abdomen_ct_1.5mm_lps.nii.gz"}


@pytest.fixture(scope="session")
def series(shared_data, tmp_path_factory) -> dict[str, Path]:
    """``{"ras": folder, "lps": folder}``: DICOM CT series of the two real scans (both orientations)."""
    root = tmp_path_factory.mktemp("dicom")
    out = {}
    for key, name in SCANS.items():
        hu, affine = _nifti(shared_data / "ct" / name)
        out[key] = write_series(hu, affine, root / key, seed=len(key) + ord(key[0]))
    return out


@pytest.fixture(scope="session")
def small(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 40 x 8 block of the RAS scan (HU, affine) for the refusal tests."""
    hu, affine = _nifti(shared_data / "ct" / SCANS["ras"])
    corner = affine @ [40, 30, 10, 1]
    out = affine.copy()
    out[:3, 3] = corner[:3]
    return hu[40:80, 30:70, 10:18].copy(), out


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    from dcm2niix import bin as dcm2niix_bin

    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [str(dcm2niix_bin), "-z", "n", "-b", "n", "-f", "oracle", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return nib.load(str(out / "oracle.nii"))


# ------------------------------------------------------------------------------------ the oracle


@pytest.mark.parametrize("key", ["ras", "lps"])
def test_volume_equals_dcm2niix(series, key, tmp_path):
    vol = load_volume(series[key])
    oracle = _dcm2niix(series[key], tmp_path)
    mine, mine_aff = _canonical(vol.array, vol.affine)
    ref, ref_aff = _canonical(oracle.get_fdata(dtype=np.float64), oracle.affine)
    assert mine.shape == ref.shape
    np.testing.assert_array_equal(mine.astype(np.float64), ref)
    np.testing.assert_allclose(mine_aff, ref_aff, atol=1e-3, rtol=0)
    assert vol.array.dtype == np.int16  # whole HU after the rescale, stored compactly


@pytest.mark.parametrize("key", ["ras", "lps"])
def test_volume_equals_source_nifti_at_every_world_point(series, shared_data, key):
    """Each source voxel lands on a hiend voxel (to 1e-3 mm) holding the same HU: slices sorted by
    position (file names are shuffled), rescale applied, axes and signs right."""
    hu, affine = _nifti(shared_data / "ct" / SCANS[key])
    vol = load_volume(series[key])
    assert vol.path == series[key] and vol.spacing == pytest.approx(
        tuple(np.sqrt((affine[:3, :3] ** 2).sum(0)))
    )
    assert "".join(vol.orientation) == key.upper()  # dicom2nifti keeps the scanner's array order
    idx = np.indices(hu.shape).reshape(3, -1)
    world = affine @ np.vstack([idx, np.ones(idx.shape[1])])
    q = (np.linalg.inv(vol.affine) @ world)[:3]
    assert np.abs(q - np.round(q)).max() < 1e-3 / min(vol.spacing)
    q = np.round(q).astype(int)
    np.testing.assert_array_equal(vol.array[q[0], q[1], q[2]], hu.reshape(-1))


def test_left_right_anatomy_on_the_dicom_path(series, shared_data):
    """As test_preprocess.test_left_half_matches_anatomy: organs of the patient's left at world x
    below the spine (RAS+), right ones above, measured with the affine hiend read from DICOM."""
    ct = shared_data / "ct"
    seg, seg_aff = _nifti(ct / "body_ct_3mm_ras_30slices_seg.nii.gz")
    names = json.loads((ct / "body_ct_3mm_ras_30slices_seg_labels.json").read_text())
    value = {v: int(k) for k, v in names["labels_present_in_example_seg"].items()}
    vol = load_volume(series["ras"])
    # the label map placed on hiend's grid through world coordinates (exact: same grid up to axes)
    idx = np.indices(seg.shape).reshape(3, -1)
    q = np.round(np.linalg.inv(vol.affine) @ seg_aff @ np.vstack([idx, np.ones(idx.shape[1])])).astype(int)
    lab = np.zeros(vol.shape, np.uint8)
    lab[q[0], q[1], q[2]] = seg.reshape(-1)
    grid = np.indices(vol.shape).reshape(3, -1)
    x = (vol.affine @ np.vstack([grid, np.ones(grid.shape[1])]))[0].reshape(vol.shape)
    spine = x[lab == value["spinal_cord"]].mean()
    for organ in ("spleen", "kidney_left", "autochthon_left", "iliopsoas_left"):
        assert (x[lab == value[organ]] < spine).mean() > 0.98, organ
    for organ in ("kidney_right", "autochthon_right", "iliopsoas_right", "liver"):
        assert (x[lab == value[organ]] < spine).mean() < 0.15, organ
    # the image agrees with the anatomy at those voxels: air in the left lung, bone in L1, both sides
    lung = lab == value["lung_lower_lobe_left"]
    assert np.median(vol.array[lung]) < -500 and (x[lung] < spine).mean() > 0.98
    assert np.median(vol.array[lab == value["vertebrae_L1"]]) > 150


def test_lps_series_patient_left_is_the_high_end_of_axis_0(series):
    vol = load_volume(series["lps"])
    assert vol.orientation == ("L", "P", "S")
    x_first = (vol.affine @ [0, 0, 0, 1])[0]
    x_last = (vol.affine @ [vol.shape[0] - 1, 0, 0, 1])[0]
    assert x_last < x_first  # towards the patient's left = towards world -x (RAS+)


def test_rescale_slope_and_zip(small, tmp_path):
    hu, affine = small
    folder = write_series(hu, affine, tmp_path / "s2", slope=2.0)
    vol = load_volume(folder)
    intercept = min(-1024, int(hu.min()))
    expected = np.round((hu - intercept) / 2.0) * 2.0 + intercept
    np.testing.assert_array_equal(vol.array, expected)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    archive = tmp_path / "s2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"study/series/{f.name}")
    zipped = load_volume(archive)
    np.testing.assert_array_equal(zipped.array, vol.array)
    np.testing.assert_array_equal(zipped.affine, vol.affine)


def write_multiframe(hu: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """``hu`` as one Enhanced CT file: geometry and rescale in the shared functional groups, one
    PlanePositionSequence per frame (frames in stack order)."""
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)
    sx, sy, sz = (float(np.linalg.norm(lps[:3, i])) for i in range(3))
    intercept = float(min(-1024, int(hu.min())))
    stored = np.round(hu.astype(np.float64) - intercept).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = _meta(ENHANCED_CT)
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.Modality, ds.PatientID, ds.SeriesDescription, ds.InstanceNumber = "CT", "hiend", "enhanced", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames, ds.Rows, ds.Columns = hu.shape[2], hu.shape[1], hu.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, orient, values = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [f"{sy:.6f}", f"{sx:.6f}"], f"{sz:.6f}"
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in [*(lps[:3, 0] / sx), *(lps[:3, 1] / sy)]]
    values.RescaleSlope, values.RescaleIntercept, values.RescaleType = "1", f"{intercept:g}", "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    shared.PixelValueTransformationSequence = [values]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(hu.shape[2]):
        plane, content, frame = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in (lps @ [0, 0, k, 1])[:3]]
        content.InStackPositionNumber, content.StackID = k + 1, "1"
        frame.PlanePositionSequence, frame.FrameContentSequence = [plane], [content]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(np.transpose(stored, (2, 1, 0))).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_multiframe_enhanced_ct_equals_the_series(small, tmp_path):
    hu, affine = small
    path = write_multiframe(hu, affine, tmp_path / "mf" / "enhanced.dcm")
    vol = load_volume(path)  # the file itself, or the folder holding it
    np.testing.assert_array_equal(vol.array, hu)  # the shared rescale applied
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(load_volume(path.parent).array, hu)
    oracle = _dcm2niix(path.parent, tmp_path / "o")
    ref, ref_aff = _canonical(oracle.get_fdata(dtype=np.float64), oracle.affine)
    mine, mine_aff = _canonical(vol.array, vol.affine)
    np.testing.assert_array_equal(mine.astype(np.float64), ref)
    np.testing.assert_allclose(mine_aff, ref_aff, atol=1e-3, rtol=0)
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[2].FrameContentSequence[0].InStackPositionNumber = 5
    ds.save_as(path, enforce_file_format=True)
    _refused(path, "frame 3 has InStackPositionNumber 5; frames not stored in stack order")


# ------------------------------------------------------------------------------------ refusals


def _refused(path: Path, match: str, **kw) -> str:
    with pytest.raises(InputError, match=match) as info:
        load_volume(path, **kw)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


def test_several_series_listed_and_picked(small, tmp_path):
    hu, affine = small
    folder = tmp_path / "two"
    write_series(hu, affine, folder / "a", series_uid="1.2.826.0.1.1", desc="AX soft")
    write_series(hu + 10, affine, folder / "b", series_uid="1.2.826.0.1.2", desc="AX bone", seed=1)
    text = _refused(folder, "2 series in one folder")
    assert "1.2.826.0.1.1 'AX soft' (8 files)" in text and "1.2.826.0.1.2 'AX bone'" in text
    assert "--series" in text
    np.testing.assert_array_equal(load_volume(folder, series="1.2.826.0.1.2").array, hu + 10)
    np.testing.assert_array_equal(load_volume(folder, series=["9.9", "1.2.826.0.1.1"]).array, hu)
    _refused(folder, "no series 9.9; the folder holds", series="9.9")


def test_missing_and_duplicate_and_uneven_slices(small, tmp_path):
    hu, affine = small
    missing = write_series(hu, affine, tmp_path / "missing")
    files = sorted(missing.iterdir(), key=lambda f: int(pydicom.dcmread(f).InstanceNumber))
    files[3].unlink()
    assert "slice gaps 3 to 6 mm" in _refused(missing, "missing slices or uneven slice spacing")

    dup = write_series(hu, affine, tmp_path / "dup")
    first = sorted(dup.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dup / "copy_of_a_slice", enforce_file_format=True)
    _refused(dup, r"duplicate slice position .* in (IM\d+|copy_of_a_slice) and")

    uneven = write_series(hu, affine, tmp_path / "uneven")
    f = next(f for f in uneven.iterdir() if pydicom.dcmread(f).InstanceNumber == 4)
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [
        ds.ImagePositionPatient[0],
        ds.ImagePositionPatient[1],
        float(ds.ImagePositionPatient[2]) + 1.0,
    ]
    ds.save_as(f, enforce_file_format=True)
    assert "slice gaps 2 to 4 mm" in _refused(uneven, "uneven slice spacing")


def test_gantry_tilt_and_mixed_orientations(small, tmp_path):
    hu, affine = small
    tilted = write_series(hu, affine, tmp_path / "tilt", tilt_mm=0.5)  # about 9.5 degrees
    _refused(tilted, "gantry tilt")

    mixed = write_series(hu, affine, tmp_path / "mixed")
    for f in sorted(mixed.iterdir())[:4]:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
        ds.save_as(f, enforce_file_format=True)
    _refused(mixed, "mixed slice orientations")


def test_compressed_without_decoder_names_the_package(small, tmp_path):
    hu, affine = small
    folder = write_series(hu, affine, tmp_path / "htj2k", transfer_syntax=HTJ2KLossless)
    from pydicom.pixels import get_decoder

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    _refused(
        folder,
        r"compressed transfer syntax .*High-Throughput JPEG 2000.* no decoder installed .*pip install pylibjpeg",
    )


def _non_image(folder: Path, sop_class: str, modality: str) -> None:
    ds = Dataset()
    ds.file_meta = _meta(sop_class)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = modality, generate_uid(), "hiend"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{modality}.dcm", enforce_file_format=True)


def test_non_image_objects_only_and_no_dicom(small, tmp_path):
    folder = tmp_path / "objects"
    _non_image(folder, SR, "SR")
    _non_image(folder, RTSTRUCT, "RTSTRUCT")
    _refused(folder, r"only non-image DICOM objects \(RTSTRUCT x1, SR x1\)")
    # beside an image series they are ignored
    hu, affine = small
    write_series(hu, affine, folder / "ct")
    np.testing.assert_array_equal(load_volume(folder).array, hu)

    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    _refused(empty, "is a folder without DICOM files")
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(empty / "README.txt", "README.txt")
    _refused(archive, "no DICOM files found")


def test_pydicom_non_image_test_files_refused(tmp_path):
    """Real objects shipped with pydicom (an SR, an RT dose grid, a DICOM-SEG): no scan among them."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "real_objects"
    folder.mkdir()
    for name in ("reportsi.dcm", "rtdose.dcm", "liver_1frame.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    _refused(folder, r"only non-image DICOM objects \(RTDOSE x1, SEG x1, SR x1\)")


def test_without_the_extra_one_line_says_what_to_install(series, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pydicom" else real(n, *a))
    _refused(series["ras"], r"pip install 'hiend-data\[dicom\]'")


def test_pydicom_test_file_ct_small_refused_cleanly(tmp_path):
    """pydicom ships CT_small.dcm (one 128 x 128 CT slice): not a volume, refused in one line."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.Modality == "CT" and int(ds.get("NumberOfFrames", 1)) == 1
    _refused(path, "a single-slice DICOM image, not a volume")
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(path, folder / "CT_small.dcm")
    _refused(folder, "single-slice")


# ------------------------------------------------------------------------------ CLI and datasets

runner = CliRunner()


def test_cli_inspect_series_and_bad_folder(series, small, tmp_path):
    res = runner.invoke(app, ["inspect", str(series["lps"]), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["shape"] == [120, 126, 164] and info["orientation"] == "LPS" and info["dtype"] == "int16"
    assert (info["min"], info["max"]) == (-1078.0, 3343.0)

    hu, affine = small
    two = tmp_path / "two"
    write_series(hu, affine, two / "a", series_uid="1.2.826.0.2.1")
    write_series(hu, affine, two / "b", series_uid="1.2.826.0.2.2", seed=3)
    bad = runner.invoke(app, ["inspect", str(two)])
    assert bad.exit_code == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and str(two) in lines[0] and "2 series in one folder" in lines[0]
    ok = runner.invoke(app, ["inspect", str(two), "--series", "1.2.826.0.2.2", "--json"])
    assert ok.exit_code == 0, ok.output


def test_cli_inspect_subprocess_exit_codes(series, tmp_path):
    """The installed entry point: exit 0 on a series, exit 2 and one stderr line on a bad folder."""
    exe = shutil.which("hiend-data") or str(Path(__import__("sys").executable).parent / "hiend-data")
    ok = subprocess.run([exe, "inspect", str(series["ras"])], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "RAS" in ok.stdout and "3 x 3 x 3 mm" in ok.stdout
    bad_dir = tmp_path / "only_sr"
    _non_image(bad_dir, SR, "SR")
    bad = subprocess.run([exe, "inspect", str(bad_dir)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and str(bad_dir) in bad.stderr


def test_discovery_and_preprocess_of_series_folders(small, tmp_path):
    hu, affine = small
    root = tmp_path / "dataset"
    write_series(hu, affine, root / "patient1" / "ct")
    write_series(hu + 5, affine, root / "patient2", seed=2)
    write_series(hu, affine, root / "patient3" / "two" / "a", series_uid="1.2.826.0.3.1", seed=4)
    write_series(hu - 5, affine, root / "patient3" / "two" / "b", series_uid="1.2.826.0.3.2", seed=5)
    cases = discover(root)
    # every folder directly holding DICOM files is one case named by the folder
    assert [c.case_id for c in cases] == ["a", "b", "ct", "patient2"]
    assert all(len(c.images) == 1 and c.images[0].is_dir() for c in cases)

    manifest = tmp_path / "list.txt"
    manifest.write_text("dataset/patient1/ct\ndataset/patient2\ndataset/patient3/two\n")
    assert [c.case_id for c in discover(manifest)] == ["ct", "patient2", "two"]
    out = tmp_path / "cache"
    res = runner.invoke(app, ["preprocess", str(manifest), str(out), "--workers", "0", "--no-progress"])
    assert res.exit_code == 2 and "2 series in one folder" in res.stderr
    res = runner.invoke(
        app,
        [
            "preprocess",
            str(manifest),
            str(out),
            "--workers",
            "0",
            "--no-progress",
            "--series",
            "1.2.826.0.3.2",
        ],
    )
    assert res.exit_code == 0, res.output
    from hiend_data.cache import Cache

    assert sorted(Cache.open(out).cases) == ["ct", "patient2", "two"]


# ------------------------------------------------------------------------ DICOM-SEG (dicom_seg)

highdicom = pytest.importorskip("highdicom")


@pytest.mark.parametrize("key", ["ras", "lps"])
def test_seg_written_on_a_series_decodes_back_and_reads_alone(series, key, tmp_path):
    """A label map on the grid of a real scan's series -> SEG -> the same map (through the source's
    frames, and from the SEG alone placed back on the grid); frames without labels are left out."""
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import decode_on_source, segment_names, write_seg
    from hiend_data.geometry import place_on_grid

    vol = load_volume(series[key])
    x, y, z = vol.shape
    labels = np.zeros(vol.shape, np.uint8)
    labels[x // 4 : x // 2, y // 3 : y // 2, z // 3 : z // 2] = 1  # a block in the middle slices
    labels[x // 2 :, : y // 4, z // 2 : z // 2 + 2] = 4  # value 4: segments 2 and 3 named but empty
    labels[0, 0, z // 3] = 2  # one voxel in a corner
    headers = series_headers(series[key])
    names = {1: "liver", 2: "spleen", 4: "kidney_left"}
    out = write_seg(labels, vol.affine, headers, tmp_path / "seg.dcm", names, software_version="test")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.SeriesNumber == 1001 and ds.SeriesInstanceUID != headers[0].SeriesInstanceUID
    # one frame per (slice, segment) holding that segment: 1 -> z//2 - z//3 slices, 2 -> 1, 4 -> 2
    assert int(ds.NumberOfFrames) == (z // 2 - z // 3) + 1 + 2
    assert segment_names(out) == {1: "liver", 2: "spleen", 3: "label 3", 4: "kidney_left"}
    # SNOMED codes a viewer recognises (a paired organ with its side), and a display colour each
    types = {int(d.SegmentNumber): d.SegmentedPropertyTypeCodeSequence[0] for d in ds.SegmentSequence}
    assert {n: (c.CodeValue, c.CodingSchemeDesignator) for n, c in types.items()} == {
        1: ("10200004", "SCT"),
        2: ("78961009", "SCT"),
        3: ("85756007", "SCT"),  # "label 3": Tissue
        4: ("18639004", "SCT"),  # Left kidney
    }
    colours = [tuple(d.RecommendedDisplayCIELabValue) for d in ds.SegmentSequence]
    assert len(set(colours)) == 4
    assert np.array_equal(decode_on_source(out, headers, vol.affine, vol.shape), labels)
    alone = load_volume(out)
    assert alone.shape[2] == z // 2 + 2 - z // 3  # the span of its frames only
    assert alone.array.dtype == np.uint8
    placed = place_on_grid(alone.array, alone.affine, vol.shape, vol.affine)
    assert placed is not None and np.array_equal(placed, labels)
    res = runner.invoke(app, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["segments"] == {"1": "liver", "2": "spleen", "3": "label 3", "4": "kidney_left"}
    assert info["label_values"] == [0, 1, 2, 4] and info["shape"] == list(alone.shape)


def test_seg_refuses_a_label_map_off_the_series_grid(series, tmp_path):
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import write_seg

    vol = load_volume(series["ras"])
    labels = np.ones(vol.shape, np.uint8)
    shifted = vol.affine.copy()
    shifted[:3, 3] += vol.affine[:3, 0] * 0.5  # half a voxel along the first axis
    with pytest.raises(InputError, match="does not lie on the label map's grid"):
        write_seg(labels, shifted, series_headers(series["ras"]), tmp_path / "seg.dcm")
    with pytest.raises(InputError, match="reaches voxel"):
        write_seg(labels[:-3], vol.affine, series_headers(series["ras"]), tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists() and list(tmp_path.iterdir()) == []


def test_pydicom_real_seg_reads_as_a_label_map(tmp_path):
    """pydicom's liver_1frame.dcm (a one-frame BINARY SEG made by another tool): its pixels, decoded
    independently by pydicom, are hiend's label map (array axes column, row); a big-endian one and a
    folder holding only a SEG are refused in one line."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("liver_1frame.dcm"))
    vol = load_volume(path)
    pixels = pydicom.dcmread(path).pixel_array  # [rows, columns], 0/1
    assert vol.shape == (pixels.shape[1], pixels.shape[0], 1)
    assert np.array_equal(vol.array[:, :, 0], pixels.T) and int(vol.array.sum()) > 1000
    spacing = [
        float(v)
        for v in pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ]
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :2], axis=0), spacing[::-1], rtol=1e-6)
    _refused(Path(get_testdata_file("liver_expb_1frame.dcm")), "not a readable DICOM Segmentation")
    folder = tmp_path / "segs"
    folder.mkdir()
    shutil.copy(path, folder / "seg.dcm")
    _refused(folder, "give a SEG file itself")


def test_place_on_grid_exact_blocks_only():
    from hiend_data.geometry import place_on_grid

    rng = np.random.default_rng(0)
    target = np.diag([0.8, 0.8, 2.0, 1.0])
    target[:3, 3] = [-5, 7, 11]
    full = np.zeros((9, 8, 7), np.uint8)
    full[2:6, 1:5, 3:6] = rng.integers(0, 4, (4, 4, 3))
    block = full[2:6, 1:5, 3:6]
    corner = target @ [2, 1, 3, 1]
    # the block stored with axes permuted and the slice axis reversed
    stored = np.flip(np.transpose(block, (2, 0, 1)), axis=0)
    aff = np.zeros((4, 4))
    aff[:3, 0] = -target[:3, 2]  # stored axis 0: target axis 2, reversed
    aff[:3, 1] = target[:3, 0]
    aff[:3, 2] = target[:3, 1]
    aff[:3, 3] = corner[:3] + target[:3, 2] * (block.shape[2] - 1)
    aff[3, 3] = 1
    assert np.array_equal(place_on_grid(stored, aff, full.shape, target), full)
    assert np.array_equal(place_on_grid(full, target, full.shape, target), full)
    half = target.copy()
    half[:3, 3] += [0.4, 0, 0]  # half a voxel off
    assert place_on_grid(full, half, full.shape, target) is None
    scaled = target @ np.diag([2.0, 1, 1, 1])  # another spacing
    assert place_on_grid(full, scaled, full.shape, target) is None
    outside = target.copy()
    outside[:3, 3] -= target[:3, 0] * 3  # three voxels before the grid: labelled voxels fall off it
    assert place_on_grid(full, outside, full.shape, target) is None
    assert place_on_grid(np.zeros_like(full), outside, full.shape, target).sum() == 0


def test_zipped_series_in_a_folder_are_cases(small, tmp_path):
    from hiend_data.naming import dicom_folders

    hu, affine = small
    root = tmp_path / "pool"
    write_series(hu, affine, root / "plain")
    packed = write_series(hu + 7, affine, tmp_path / "packed", seed=9)
    with zipfile.ZipFile(root / "packed.zip", "w") as zf:
        for f in packed.iterdir():
            zf.write(f, f"packed/{f.name}")
    with zipfile.ZipFile(root / "notes.zip", "w") as zf:  # not DICOM: not a case
        zf.writestr("notes.txt", "hello")
    assert [p.name for p in dicom_folders(root)] == ["packed.zip", "plain"]
    cases = discover(root)
    assert [c.case_id for c in cases] == ["packed", "plain"]
    np.testing.assert_array_equal(load_volume(cases[0].images[0]).array, hu + 7)


def test_labelmap_seg_is_compressed_and_decodes_the_same(series, tmp_path):
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import decode_on_source, write_seg
    from hiend_data.geometry import place_on_grid

    vol = load_volume(series["lps"])
    x, y, z = vol.shape
    labels = np.zeros(vol.shape, np.uint8)
    labels[x // 4 : x // 2, y // 3 : y // 2, z // 3 : z // 2] = 1
    labels[x // 2 :, : y // 4, z // 2 : z // 2 + 5] = 3
    headers = series_headers(series["lps"])
    names = {1: "liver", 2: "spleen", 3: "aorta"}
    binary = write_seg(labels, vol.affine, headers, tmp_path / "binary.dcm", names)
    packed = write_seg(labels, vol.affine, headers, tmp_path / "labelmap.dcm", names, seg_type="labelmap")
    ds = pydicom.dcmread(packed)
    assert ds.SegmentationType == "LABELMAP" and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert int(ds.NumberOfFrames) == z // 2 + 5 - z // 3  # one frame per labelled slice
    assert packed.stat().st_size < binary.stat().st_size  # (100x for 41 labels: BENCHMARKS.md)
    for path in (binary, packed):
        assert np.array_equal(decode_on_source(path, headers, vol.affine, vol.shape), labels)
        alone = load_volume(path)
        assert np.array_equal(place_on_grid(alone.array, alone.affine, vol.shape, vol.affine), labels)
    with pytest.raises(InputError, match="segmentation type 'fractional'"):
        write_seg(labels, vol.affine, headers, tmp_path / "f.dcm", seg_type="fractional")


def test_fractional_seg_refused_in_one_line(series, tmp_path):
    """A probability (FRACTIONAL) SEG is not a label map: refused by load_volume and the CLI."""
    from pydicom.sr.codedict import codes

    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import _with_type2

    headers = sorted(series_headers(series["ras"]), key=lambda d: float(d.ImagePositionPatient[2]))
    probs = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns)), np.float32)
    probs[3:6, 10:20, 10:20] = 0.7
    algo = highdicom.AlgorithmIdentificationSequence(
        name="x", version="1", family=codes.DCM.ArtificialIntelligence
    )
    desc = highdicom.seg.SegmentDescription(
        segment_number=1,
        segment_label="liver",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type="AUTOMATIC",
        algorithm_identification=algo,
    )
    seg = highdicom.seg.Segmentation(
        source_images=_with_type2(headers), pixel_array=probs, segmentation_type="FRACTIONAL",
        segment_descriptions=[desc], series_instance_uid=highdicom.UID(), series_number=2,
        sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="0",
    )  # fmt: skip
    path = tmp_path / "probabilities.dcm"
    seg.save_as(path)
    _refused(path, "a FRACTIONAL DICOM Segmentation")
    res = runner.invoke(app, ["inspect", str(path)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and str(path) in res.stderr


def test_preprocess_takes_dicom_seg_labels_like_nifti_ones(small, tmp_path):
    """A manifest pairing a series with a DICOM-SEG label (e.g. a radiologist's, from a viewer): the
    cache holds the same label as from the NIfTI of that map; a SEG of another grid is refused."""
    from hiend_data import save_volume
    from hiend_data.cache import Cache
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import write_seg

    hu, affine = small
    series = write_series(hu, affine, tmp_path / "data" / "ct", seed=11)
    vol = load_volume(series)
    labels = np.zeros(vol.shape, np.uint8)
    labels[5:20, 8:30, 3:6] = 1
    labels[22:35, 5:15, 2:4] = 2
    write_seg(
        labels, vol.affine, series_headers(series), tmp_path / "data" / "seg.dcm", {1: "liver", 2: "spleen"}
    )
    save_volume(tmp_path / "data" / "label.nii.gz", labels, like=vol)
    caches = {}
    for kind, label in (("seg", "seg.dcm"), ("nifti", "label.nii.gz")):
        manifest = tmp_path / "data" / f"{kind}.txt"
        manifest.write_text(f"ct,{label}\n")
        out = tmp_path / f"cache_{kind}"
        res = runner.invoke(app, ["preprocess", str(manifest), str(out), "--workers", "0", "--no-progress"])
        assert res.exit_code == 0, res.output
        caches[kind] = Cache.open(out).case("ct")
    assert caches["seg"].classes == [1, 2]
    assert np.array_equal(np.asarray(caches["seg"].label), np.asarray(caches["nifti"].label))

    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0] * 0.5  # the same scan half a voxel away: not this SEG's grid
    other = write_series(hu, shifted, tmp_path / "data" / "other", seed=12)
    manifest = tmp_path / "data" / "bad.txt"
    manifest.write_text("other,seg.dcm\n")
    res = runner.invoke(
        app, ["preprocess", str(manifest), str(tmp_path / "bad"), "--workers", "0", "--no-progress"]
    )
    assert res.exit_code == 2 and "seg.dcm" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert other.is_dir()


def test_seg_claiming_a_huge_frame_stack_refused_before_decoding(series, tmp_path, monkeypatch):
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import write_seg

    vol = load_volume(series["ras"])
    labels = np.zeros(vol.shape, np.uint8)
    labels[10:20, 10:20, 5:25] = 1
    path = write_seg(
        labels, vol.affine, series_headers(series["ras"]), tmp_path / "seg.dcm", seg_type="labelmap"
    )
    monkeypatch.setenv("HIEND_MAX_VOLUME_BYTES", str(int(vol.shape[0] * vol.shape[1] * 19)))  # 19 slices
    _refused(path, "Segmentation frames hold")


# ------------------------------------------------------------- series assembly rules (issue 18)


def _by_instance(folder: Path) -> list[Path]:
    return sorted(
        (f for f in folder.rglob("*") if f.is_file()), key=lambda f: int(pydicom.dcmread(f).InstanceNumber)
    )


def test_symlinked_folders_and_files_are_read_once_each(small, tmp_path):
    """Half the slices in a folder outside reached by a link, a second name for one slice, a link
    back to the series' parent: the volume is the whole series, each slice once."""
    hu, affine = small
    series = write_series(hu, affine, tmp_path / "series")
    files = _by_instance(series)
    outside = tmp_path / "store"
    outside.mkdir()
    for f in files[4:]:
        f.rename(outside / f.name)
    (series / "linked").symlink_to(outside, target_is_directory=True)
    (series / "again").symlink_to(files[0])
    (series / "loop").symlink_to(tmp_path, target_is_directory=True)
    vol = load_volume(series)
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


def _shift_slice(folder: Path, instance: int, dz: float) -> None:
    f = next(f for f in folder.iterdir() if pydicom.dcmread(f).InstanceNumber == instance)
    ds = pydicom.dcmread(f)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + dz]
    ds.save_as(f, enforce_file_format=True)


def test_every_slice_within_the_tolerance_of_the_affine(small, tmp_path):
    """The rule bounds each slice's error in the affine dicom2nifti really builds: a slice 0.25 mm off
    (3 mm step: tolerance 0.3 mm) is read, and the affine puts every slice within 0.25 mm of its
    ImagePositionPatient; 0.35 mm off is refused, naming the slice."""
    hu, affine = small
    ok = write_series(hu, affine, tmp_path / "ok")
    _shift_slice(ok, 4, 0.25)
    vol = load_volume(ok)
    files = _by_instance(ok)
    ipp = np.array([[float(v) for v in pydicom.dcmread(f).ImagePositionPatient] for f in files])
    placed = (LPS_FROM_RAS @ vol.affine @ np.array([[0, 0, k, 1] for k in range(len(files))]).T)[:3].T
    err = np.linalg.norm(placed - ipp, axis=1)
    assert err.max() == pytest.approx(0.25, abs=1e-3) and int(np.argmax(err)) == 3

    bad = write_series(hu, affine, tmp_path / "bad")
    _shift_slice(bad, 4, 0.35)
    name = _by_instance(bad)[3].name
    text = _refused(bad, f"uneven slice spacing: {name} \\(slice 4 of 8\\) lies 0.35 mm")
    assert "tolerance of 0.3 mm (max 0.1 mm, 10% of the 3 mm slice step)" in text


@pytest.mark.parametrize("key", ["ras", "lps"])
def test_real_series_positions_far_inside_the_tolerance(series, key):
    """The series of the real scans: every slice within 1e-5 mm of the affine's line (tolerance
    0.3 mm for the 3 mm scan, 0.15 mm for the 1.5 mm one)."""
    from hiend_data.dicom import series_headers

    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series_headers(series[key])])
    ipp = ipp[np.argsort(ipp[:, 2])]
    line = ipp[0] + np.arange(len(ipp))[:, None] * (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    assert np.linalg.norm(ipp - line, axis=1).max() < 1e-5


def test_slices_without_pixels_or_of_another_patient_refused(small, tmp_path):
    hu, affine = small
    top = write_series(hu, affine, tmp_path / "top")
    last = _by_instance(top)[-1]
    ds = pydicom.dcmread(last)
    del ds.PixelData
    ds.save_as(last, enforce_file_format=True)
    _refused(top, f"{last.name}: an image of the series without pixel data")

    mixed = write_series(hu, affine, tmp_path / "mixed" / "a", series_uid="1.2.826.0.9.1")
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 2] * 8  # the next 8 slices, another patient
    write_series(hu, shifted, tmp_path / "mixed" / "b", series_uid="1.2.826.0.9.1", seed=3)
    for f in (tmp_path / "mixed" / "b").iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientID = "other"
        ds.save_as(f, enforce_file_format=True)
    text = _refused(mixed.parent, "files of two patients, studies or frames of reference in one series")
    assert "PatientID 'hiend' (a/IM" in text and "and 'other' (b/IM" in text


def test_zip_members_bounded_by_the_volume_limit(small, tmp_path, monkeypatch):
    from hiend_data.dicom.files import _unzipped

    hu, affine = small
    folder = write_series(hu, affine, tmp_path / "s")
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"s/{f.name}")
    declared = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    monkeypatch.setenv("HIEND_MAX_VOLUME_BYTES", str(declared))
    with _unzipped(archive) as root:
        assert len(list((root / "s").iterdir())) == 8
    monkeypatch.setenv("HIEND_MAX_VOLUME_BYTES", str(declared - 1))
    _refused(archive, "the zip's members declare .* MiB unpacked, more than the volume limit")


def test_each_slice_rescaled_with_its_own_slope(small, tmp_path):
    """One slice of the real block stored at twice the resolution (slope 0.5): the volume is still
    the source HU, voxel for voxel, every slice with its own slope."""
    hu, affine = small
    folder = write_series(hu, affine, tmp_path / "s")
    f = _by_instance(folder)[3]
    ds = pydicom.dcmread(f)
    stored = ds.pixel_array.astype(np.int64) * 2 + (int(ds.RescaleIntercept) + 1024) * 2
    assert stored.max() < 65536
    ds.PixelData, ds.RescaleSlope, ds.RescaleIntercept = stored.astype(np.uint16).tobytes(), "0.5", "-1024"
    ds.save_as(f, enforce_file_format=True)
    np.testing.assert_array_equal(load_volume(folder).array, hu)


def test_a_slice_the_converter_leaves_out_is_refused(small, tmp_path, monkeypatch):
    """The last guard: the volume must have the slices hiend checked. A float slice (which
    ``_check_pixel_data`` refuses first) is dropped by dicom2nifti when that check is off."""
    from hiend_data.dicom import reader

    hu, affine = small
    folder = write_series(hu, affine, tmp_path / "s")
    f = _by_instance(folder)[-1]
    ds = pydicom.dcmread(f)
    ds.FloatPixelData = ds.pixel_array.astype(np.float32).tobytes()
    del ds.PixelData
    ds.save_as(f, enforce_file_format=True)
    _refused(folder, f"{f.name}: float pixel data")
    monkeypatch.setattr(reader, "_check_pixel_data", lambda where, ds: None)
    _refused(folder, "the volume was assembled from 7 slices, not the 8 checked")


def test_plane_angle_of_two_orientations():
    from hiend_data.dicom.geometry import _plane_angle

    axial = np.array([1.0, 0, 0, 0, 1, 0])
    a = np.radians(0.5)
    assert _plane_angle(axial, axial) == 0.0
    assert _plane_angle(axial, np.array([1.0, 0, 0, 0, -1, 0])) == 0.0  # mirrored: same plane
    assert _plane_angle(axial, np.array([0.0, 1, 0, -1, 0, 0])) == 0.0  # rotated in plane
    assert _plane_angle(axial, np.array([1.0, 0, 0, 0, np.cos(a), np.sin(a)])) == pytest.approx(0.5)
    assert _plane_angle(axial, np.array([1.0, 0, 0, 0, 0, -1])) == pytest.approx(90.0)  # coronal scout
