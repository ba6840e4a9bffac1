"""The :class:`Volume` (an array and its geometry) and how a reader's image becomes one.

A :class:`Volume` is an array plus the geometry needed to put it back in the world:

* ``array``: ``[X, Y, Z]`` (one channel) or ``[C, X, Y, Z]`` (several), header intensity scaling applied;
* ``affine``: ``(4, 4)`` float64 voxel index -> world millimetres (RAS+, nibabel's convention);
* ``spacing``: voxel size in mm per array axis (the norms of the affine's first three columns);
* ``orientation``: axis codes such as ``("R", "A", "S")`` (where each array axis points in the world);
* ``header``: the source's nibabel header (its qform and sform are what
  :func:`hiend_data.io.save_volume` writes "like" it); ``dicom``: for a DICOM series, where it was read
  from (:class:`DicomOrigin`: its UIDs on demand, for the checks of a DICOM-SEG label,
  :func:`hiend_data.io.load_label`).

Every reader of :mod:`hiend_data.readers` hands :func:`image_volume` a nibabel-like image (``dataobj``,
``affine``, ``header``); the rules on voxel data (scaling, supported types, no NaN or infinity, a 4-D
file's last axis as channels) are therefore the same for every format.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class DicomOrigin:
    """The DICOM series a :class:`Volume` was read from: the path given to
    :func:`hiend_data.io.load_volume` and its ``series`` choice. Its UIDs are read from the series'
    headers only when asked (:meth:`uids`; about 0.2 s for 300 slices), as only a DICOM-SEG label needs
    them."""

    path: Path
    series: str | tuple[str, ...] | None = None

    def uids(self) -> tuple[str, str]:
        """``(SeriesInstanceUID, FrameOfReferenceUID)`` of the series (``""`` for a missing one)."""
        from .dicom import series_headers

        first = series_headers(self.path, self.series)[0]
        return str(first.get("SeriesInstanceUID", "") or ""), str(first.get("FrameOfReferenceUID", "") or "")


@dataclass
class Volume:
    """A scan or label map and its geometry (see the module docstring for the fields)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: Any = field(default=None, repr=False)  # nibabel header of the source, reused on save
    dicom: DicomOrigin | None = field(default=None, repr=False)  # the DICOM series read (channel 0's)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return spacing_of(self.affine)

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Axis codes, e.g. ``("R", "A", "S")``: the world direction each array axis points to."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)`` (channels left out)."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        """Number of channels: 1 for ``[X, Y, Z]``, C for ``[C, X, Y, Z]``."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) per array axis: the lengths of the affine's first three columns."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return tuple(float(n) for n in norms)  # type: ignore[return-value]


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN or infinite voxels (0 for integer arrays); works in chunks to save memory."""
    if array.dtype.kind != "f":
        return 0
    flat = array.reshape(-1, order="A")  # a view for C- or Fortran-ordered arrays (NIfTI's)
    step = 1 << 24
    return int(
        sum(int(np.count_nonzero(~np.isfinite(flat[i : i + step]))) for i in range(0, flat.size, step))
    )


def _check_finite(path: Path, array: np.ndarray) -> None:
    bad = count_nonfinite(array)
    if bad:
        nan = int(np.count_nonzero(np.isnan(array)))
        raise InputError(
            f"{path}: {bad} non-finite voxels ({nan} NaN, {bad - nan} infinite) out of {array.size}"
        )


def _read_array(path: Path, img: Any) -> np.ndarray:
    """Voxel data with the header's scaling applied: raw dtype when the scaling is identity, else float32."""
    proxy = img.dataobj
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    try:
        if slope == 1.0 and inter == 0.0:
            arr = np.asarray(proxy)
        else:
            arr = img.get_fdata(dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise InputError(f"{path}: truncated or corrupt voxel data ({type(exc).__name__}: {exc})") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported voxel type {arr.dtype}")
    if arr.dtype == np.float16 or arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        arr = arr.astype(np.float32)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    return arr


def image_volume(path: Path, img: Any, dicom: DicomOrigin | None = None) -> Volume:
    """The :class:`Volume` of a nibabel-like image ``img`` read from ``path``: its voxels with the
    header's scaling (raw dtype when the scaling is identity, else float32; float16 and float64 become
    float32, bool uint8), a 4-D image's last axis as channels ``[C, X, Y, Z]`` (one channel dropped);
    InputError naming ``path`` for NaN or infinite voxels, corrupt data or an unsupported voxel type."""
    arr = _read_array(path, img)
    _check_finite(path, arr)
    if arr.ndim == 4:
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0)) if arr.shape[-1] > 1 else arr[..., 0]
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(array=arr, affine=affine, path=path, header=img.header, dicom=dicom)
