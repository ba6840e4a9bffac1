"""Writing outputs (hiend_train.outputs): an error about the place names the file."""

from __future__ import annotations

import errno

import pytest

from hiend_train.outputs import os_errno, writing


def test_writing_names_the_file_whatever_the_library_raised(tmp_path):
    target = tmp_path / "x.pt"
    with pytest.raises(OSError) as info, writing(target):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("basic_ios::clear: iostream error") from None  # torch.save's way
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert os_errno(ValueError("Error while serializing: I/O error: ... (os error 30)")) == errno.EROFS
    with pytest.raises(RuntimeError, match="a bug"), writing(target):
        raise RuntimeError("a bug")  # not about the place: unchanged
    assert os_errno(OSError(errno.ENOENT, "gone")) is None
