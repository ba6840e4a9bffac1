"""Hostile input (issue 19): a file no reader takes is named as such, never read as another format.

Before, anything that was not a NIfTI name silently went to the DICOM reader or to NIfTI's checks;
now the lookup is explicit (:mod:`hiend_data.readers`) and its refusal names the file and the formats.
"""

from __future__ import annotations

from hostile_cli import one_line_exit_2, run


def test_inspect_of_a_file_no_reader_takes(tmp_path):
    scan = tmp_path / "scan.mha"
    scan.write_bytes(b"ObjectType = Image\n" + b"\0" * 400)
    line = one_line_exit_2(run("hiend-data", "inspect", scan), str(scan), "no reader for it")
    assert "not a NIfTI file name (.nii or .nii.gz) nor a DICOM series" in line


def test_inspect_of_a_file_with_the_dicom_marker_but_a_nifti_name(tmp_path):
    """A NIfTI name is the NIfTI reader's, whatever the bytes: refused as a NIfTI file, not read as DICOM."""
    scan = tmp_path / "scan.nii"
    scan.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 400)
    one_line_exit_2(run("hiend-data", "inspect", scan), str(scan), "NIfTI")
