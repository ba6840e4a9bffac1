"""The readers table: which reader reads a path is one explicit lookup, and a new format is one entry."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from hiend_data import InputError, load_volume
from hiend_data import readers as readers_mod
from hiend_data.discovery import collect_cases
from hiend_data.readers import DICOM, NIFTI, READERS, find_reader, reader_for
from hiend_data.volume import image_volume


def _dicom_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return path


def test_the_table_and_the_lookup(tmp_path):
    assert READERS == (NIFTI, DICOM)
    assert NIFTI.suffixes == (".nii.gz", ".nii") and NIFTI.channel_files and not NIFTI.reads_folders
    assert DICOM.reads_folders and DICOM.partial_labels and not DICOM.channel_files
    (tmp_path / "x.nii.gz").write_bytes(b"")
    assert find_reader(tmp_path / "x.nii.gz") is NIFTI
    assert find_reader(tmp_path / "missing.nii") is NIFTI  # by name alone
    assert find_reader(_dicom_file(tmp_path / "series" / "IM1")) is DICOM  # by content, any name
    assert find_reader(tmp_path / "series") is DICOM
    assert find_reader(_dicom_file(tmp_path / "odd.nii")) is NIFTI  # a NIfTI name is never DICOM
    (tmp_path / "scan.mha").write_bytes(b"x" * 400)
    assert find_reader(tmp_path / "scan.mha") is None


def test_no_reader_is_said_not_guessed(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"x" * 400)
    expected = (
        f"{tmp_path / 'scan.mha'}: not a NIfTI file name (.nii or .nii.gz) nor a DICOM series "
        "(folder, .zip or DICOM file): no reader for it"
    )
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        reader_for(tmp_path / "scan.mha")
    with pytest.raises(InputError, match=f"^{re.escape(expected)}$"):
        load_volume(tmp_path / "scan.mha")
    (tmp_path / "notes").mkdir()
    with pytest.raises(InputError, match=r"notes: is a folder without DICOM files: no reader for it"):
        load_volume(tmp_path / "notes")
    with pytest.raises(FileNotFoundError):
        reader_for(tmp_path / "gone.mha")


class _RawReader:
    """A format added for the test: ``.raw`` files holding a 4 x 3 x 2 float32 block, 2 mm voxels."""

    name = "RAW"
    what = "a raw block (.raw)"
    plural = ".raw files"
    suffixes = (".raw",)
    channel_files = False
    reads_folders = False
    partial_labels = False

    def matches(self, path):
        return path.name.endswith(".raw")

    def read(self, path, series=None):
        data = np.fromfile(path, dtype=np.float32).reshape(4, 3, 2)
        return image_volume(path, nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])))


def test_a_new_format_is_one_entry_of_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_mod, "READERS", (*READERS, _RawReader()))
    raw = tmp_path / "block.raw"
    np.arange(24, dtype=np.float32).tofile(raw)
    vol = load_volume(raw)
    assert vol.shape == (4, 3, 2) and vol.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(vol.array.ravel(), np.arange(24))
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(InputError, match=r"nor a raw block \(.raw\): no reader for it"):
        load_volume(tmp_path / "scan.mha")  # the messages name it by themselves
    assert [c.name for c in collect_cases([raw])] == ["block"]
