"""NIfTI files (``.nii`` / ``.nii.gz``): opening one with every check a bad file deserves, and the
header an output "like" a scan gets. The NIfTI entry of :data:`hiend_data.readers.READERS` reads with
:func:`open_nifti`; :func:`hiend_data.io.save_volume` writes with :func:`header_like`.

Everything that is wrong with a file raises :class:`~hiend_data.errors.InputError` naming it, before
large allocations where the header alone can tell: 2-D or 5-D images, empty dimensions, a pixdim that
is zero, negative or not finite, a non-finite or singular affine, more voxels than the volume limit
(:func:`hiend_data.limits.check_volume_bytes`), and headers claiming more voxel bytes than the file
(or its gzip stream) holds.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .limits import check_volume_bytes
from .naming import image_suffix, is_image
from .volume import Volume, spacing_of

# deflate cannot compress better than about 1032:1, so a header claiming more bytes than that is a lie.
_MAX_DEFLATE_RATIO = 1100


def open_nifti(path: Path) -> Any:
    """nibabel image of ``path`` with its header checked (the module's refusals); no voxel data read
    yet. FileNotFoundError for a missing path."""
    import nibabel as nib

    if not path.exists():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    if not is_image(path):
        raise InputError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file")
    quiet = logging.getLogger("nibabel.global")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its header "fixes" are logged to stderr; we report problems ourselves
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for garbage
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    finally:
        quiet.setLevel(level)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    _check_header(path, img, size)
    return img


def _check_header(path: Path, img: Any, file_size: int) -> None:
    hdr = img.header
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise InputError(f"{path}: {len(shape)}-D image {shape}, expected a 3-D volume")
    if len(shape) > 4:
        raise InputError(f"{path}: {len(shape)}-D image {shape}, expected a 3-D volume (or 4-D channels)")
    if min(shape) < 1:
        raise InputError(f"{path}: empty dimension in shape {shape}")
    raw = _raw_pixdim(path, type(hdr))[1:4]  # nibabel's own header already turned a zero pixdim into 1
    if not np.all(np.isfinite(raw)) or np.any(raw <= 0):
        raise InputError(
            f"{path}: invalid voxel spacing {tuple(float(v) for v in raw)} in the header "
            "(pixdim must be finite and > 0)"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: non-finite values in the header's affine")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12 or min(spacing_of(affine)) <= 0:
        raise InputError(f"{path}: singular affine in the header (axes collapse)")
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    # in memory: the stored type, or float32 when a scaling applies (before a single byte is inflated)
    check_volume_bytes(shape, max(itemsize, 4), path, "header claims")
    needed = int(np.prod(shape, dtype=np.int64)) * itemsize + int(hdr.get("vox_offset", 0) or 0)
    _check_size(path, shape, needed, file_size)


def _raw_pixdim(path: Path, header_class: Any) -> np.ndarray:
    """``pixdim`` exactly as stored in the file (nibabel's loader silently "fixes" zeros to 1)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fh:
        raw = header_class.from_fileobj(fh, check=False)
    return np.asarray(raw["pixdim"], dtype=np.float64)


def _check_size(path: Path, shape: tuple[int, ...], needed: int, file_size: int) -> None:
    """Refuse headers that claim more voxel bytes than the file can hold, without reading the data."""
    claim = f"header claims {'x'.join(map(str, shape))} voxels ({needed / 2**20:.1f} MiB)"
    if image_suffix(path) == ".nii":
        if file_size < needed:
            raise InputError(f"{path}: truncated: {claim} but the file has {file_size} bytes")
        return
    if needed > _MAX_DEFLATE_RATIO * file_size:
        raise InputError(f"{path}: {claim}, far beyond what {file_size} compressed bytes can hold")
    if needed >= 2**32:
        return  # gzip's size trailer is mod 2^32: let the read itself find a short stream
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")
    if isize >= needed:
        return
    # The trailer (last member's size) says too short: a truncated file, a lying header, or a
    # multi-member gzip. Count the real stream in small chunks (no big allocation) to tell.
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < needed:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        raise InputError(f"{path}: truncated or corrupt gzip stream ({claim})") from None
    if total < needed:
        raise InputError(f"{path}: {claim} but the data holds only {total} bytes")


#: The NIfTI header fields of the qform and sform (with pixdim: the qform's voxel sizes and qfac)
_FORM_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units")  # fmt: skip


def header_like(like: Volume) -> tuple[Any, bool]:
    """A NIfTI-1 header for an output on ``like``'s grid, and whether it holds ``like``'s own forms:
    True when ``like.header`` is a NIfTI header whose best affine is ``like.affine`` (then its qform and
    sform, codes included, are kept as they are; a NIfTI-2 header's are copied into NIfTI-1 fields).
    ``(None, False)`` without a NIfTI header."""
    import nibabel as nib

    src = like.header
    if not isinstance(src, nib.Nifti1Header):  # NIfTI-2's header is a subclass
        return None, False
    own = bool(np.allclose(src.get_best_affine(), like.affine))  # nibabel's own test (update_header)
    if type(src) is nib.Nifti1Header:
        return src.copy(), own
    header = nib.Nifti1Header()
    if own:
        for key in _FORM_FIELDS:
            header[key] = src[key]
    return header, own
