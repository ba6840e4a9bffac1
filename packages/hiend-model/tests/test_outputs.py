"""What predict writes and where: the output-folder rule, output names, formats, the writer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hiend_data import load_volume
from hiend_data.errors import InputError
from hiend_model.outputs import (
    OutputWriter,
    check_case_outputs,
    check_formats,
    check_output_folder,
    output_names,
    segment_names,
)

BODY = "ct/body_ct_3mm_ras_30slices.nii.gz"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- the output folder


def test_check_output_folder(tmp_path: Path):
    nifti = tmp_path / "scans"
    _touch(nifti / "a_0000.nii.gz")
    dicom = tmp_path / "study"
    _touch(dicom / "p1" / "CT" / "IM0001")  # no NIfTI files: a folder searched for series
    assert check_output_folder(tmp_path / "out", [nifti, dicom]) == (tmp_path / "out").resolve()
    assert check_output_folder(nifti / "pred", [nifti])  # a NIfTI folder is read one level deep
    for fmt in ("dicom-seg", "both"):  # ... but searched to the bottom for series, where SEGs would go
        with pytest.raises(InputError, match="writes DICOM-SEGs there"):
            check_output_folder(nifti / "pred", [nifti], fmt)
    with pytest.raises(InputError, match=r"^--out .*scans: is the input folder .*scans;"):
        check_output_folder(nifti, [nifti])
    with pytest.raises(
        InputError, match=r"^--out .*study/p1/CT/x: lies inside the DICOM input folder .*study,"
    ):
        check_output_folder(dicom / "p1" / "CT" / "x", [nifti, dicom])
    (tmp_path / "alias").symlink_to(dicom / "p1")
    with pytest.raises(InputError, match=r"^--out .*alias/CT: lies inside the DICOM input folder"):
        check_output_folder(tmp_path / "alias" / "CT", [dicom])
    with pytest.raises(InputError, match=r"is the input folder .*alias"):
        check_output_folder(dicom / "p1", [tmp_path / "alias"])
    # an input file (a zip, a multi-frame file, a NIfTI scan) has no inside, but its folder is not a
    # fine --out: the label maps would join it (the next run on the folder reads them as scans)
    with pytest.raises(InputError, match=r"^--out .*: is the folder holding the input .*series.zip;"):
        check_output_folder(tmp_path, [_touch(tmp_path / "series.zip")])
    with pytest.raises(InputError, match=r"is the folder holding the input .*a_0000.nii.gz"):
        check_output_folder(nifti, [nifti / "a_0000.nii.gz"])
    with pytest.raises(InputError, match=r"is the folder holding the input .*CT"):
        check_output_folder(dicom / "p1", [dicom / "p1" / "CT"])  # beside a series folder
    assert check_output_folder(tmp_path / "pred", [tmp_path / "series.zip"])
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(InputError, match=r"^.*loop/x: a symbolic-link loop"):
        check_output_folder(tmp_path / "loop" / "x", [nifti])


# ------------------------------------------------------------------------ names and formats


def test_output_names_follow_the_format():
    assert output_names("a", "nifti") == ["a.nii.gz"]
    assert output_names("a", "dicom-seg") == ["a.dcm"]
    assert output_names("a", "both") == ["a.nii.gz", "a.dcm"]


def test_check_formats():
    assert check_formats("nifti", "binary") is False
    with pytest.raises(InputError, match=r"^--format 'png': expected one of nifti, dicom-seg, both$"):
        check_formats("png", "binary")
    with pytest.raises(InputError, match=r"^--seg-type 'mask': expected binary or labelmap$"):
        check_formats("nifti", "mask")


def test_check_case_outputs(tmp_path: Path):
    scan = _touch(tmp_path / "a.nii.gz")
    check_case_outputs(tmp_path / "out", "a", [scan], "nifti", {scan.resolve()})
    with pytest.raises(InputError, match=r"a.nii.gz: the output would overwrite an input scan"):
        check_case_outputs(tmp_path, "a", [scan], "nifti", {scan.resolve()})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.nii.gz").symlink_to(tmp_path / "elsewhere.nii.gz")
    with pytest.raises(InputError, match=r"out/b.nii.gz: resolves to .*elsewhere.nii.gz, outside"):
        check_case_outputs(tmp_path / "out", "b", [scan], "nifti", {scan.resolve()})
    with pytest.raises(InputError, match=r"a.nii.gz: --format dicom-seg needs DICOM input"):
        check_case_outputs(tmp_path / "out", "a", [scan], "both", {scan.resolve()})


def test_segment_names_cover_every_foreground_class(tmp_path: Path):
    assert segment_names({2: "spleen"}, 4, False, "x") == {1: "label 1", 2: "spleen", 3: "label 3"}


# --------------------------------------------------------------------------------- writing


def test_writer_writes_the_label_map_on_the_input_grid(tmp_path: Path, shared_data: Path):
    volume = load_volume(shared_data / BODY)
    labels = (volume.array > 0).astype(np.uint8)
    writer = OutputWriter(tmp_path / "out", "nifti")
    (tmp_path / "out").mkdir()
    [path] = writer.write("body", shared_data / BODY, labels, volume)
    assert path == tmp_path / "out" / "body.nii.gz"
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, nib.load(shared_data / BODY).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["body.nii.gz"]  # no temporary left
