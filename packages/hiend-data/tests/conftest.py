"""Helpers for hiend-data's tests: small synthetic NIfTI files and byte-level header surgery."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def write_nifti(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray | None = None,
    dtype: type | None = None,
    slope: float | None = None,
    inter: float | None = None,
) -> Path:
    """Write ``array`` with nibabel (no checks), optionally with a stored dtype and scaling."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(array), affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def patch_header(path: Path, offset: int, data: bytes) -> Path:
    """Overwrite ``data`` at byte ``offset`` of the (possibly gzipped) NIfTI-1 file, in place."""
    gz = str(path).endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


# NIfTI-1 header byte offsets (little endian)
DIM_OFFSET = 40  # int16 dim[8]
PIXDIM_OFFSET = 76  # float32 pixdim[8]


@pytest.fixture(scope="session")
def ct_dir(shared_data: Path) -> Path:
    """``../shared/data/ct`` (real CT scans)."""
    return shared_data / "ct"


def tiny_ct(shape: tuple[int, int, int] = (12, 10, 8), seed: int = 0) -> np.ndarray:
    """A small int16 'CT': air around a soft-tissue box with a bright 'bone' inside."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, dtype=np.int16)
    sx, sy, sz = shape
    arr[2 : sx - 2, 2 : sy - 2, 1 : sz - 1] = 40
    arr[sx // 2 - 1 : sx // 2 + 1, sy // 2 - 1 : sy // 2 + 1, 2 : sz - 2] = 700
    return arr + rng.integers(-5, 6, size=shape).astype(np.int16)


def tiny_label(ct: np.ndarray) -> np.ndarray:
    """Labels for :func:`tiny_ct`: 1 = soft tissue box, 2 = bone."""
    lab = np.zeros(ct.shape, dtype=np.uint8)
    lab[ct > -500] = 1
    lab[ct > 400] = 2
    return lab


@pytest.fixture(scope="session")
def nii():
    """The helpers above as one object (test modules cannot import conftest under importlib mode)."""
    import types

    return types.SimpleNamespace(
        write=write_nifti,
        patch=patch_header,
        tiny_ct=tiny_ct,
        tiny_label=tiny_label,
        DIM=DIM_OFFSET,
        PIXDIM=PIXDIM_OFFSET,
    )
