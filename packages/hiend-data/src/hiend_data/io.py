"""Reading and writing volumes: :func:`load_volume` (any format of :mod:`hiend_data.readers`: NIfTI,
DICOM), :func:`load_label`, :func:`save_volume` (NIfTI), and the checks every reader of scans and label
maps shares (:func:`check_oriented`, :func:`check_same_grid`, :func:`label_array`).

A :class:`Volume` (:mod:`hiend_data.volume`) is an array plus the geometry needed to put it back in the
world: ``array`` ``[X, Y, Z]`` or ``[C, X, Y, Z]``, ``affine`` (RAS+ mm), ``spacing``, ``orientation``,
the source's ``header`` and, for a DICOM series, where it was read from (``dicom``).

Which reader reads a path is one explicit lookup (:func:`hiend_data.readers.reader_for`): a path no
reader takes is an InputError saying so. Everything that is wrong with a file raises
:class:`~hiend_data.errors.InputError` naming it, before large allocations where the header alone can
tell (NIfTI: :mod:`hiend_data.nifti`; DICOM: :mod:`hiend_data.dicom`).

File names follow :mod:`hiend_data.naming` (``.nii`` / ``.nii.gz``; the channel files of a case,
:func:`hiend_data.naming.channel_siblings`); files are written with :mod:`hiend_data.atomic` (whole or
not at all).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .limits import MAX_LABEL
from .naming import is_image
from .nifti import header_like
from .readers import is_segmentation_file, reader_for
from .volume import DicomOrigin, Volume, count_nonfinite, spacing_of

# the Volume and its helpers keep their import path hiend_data.io.X
__all__ = [
    "DicomOrigin",
    "Volume",
    "spacing_of",
    "count_nonfinite",
    "load_volume",
    "check_oriented",
    "check_same_grid",
    "label_array",
    "as_label",
    "smallest_label_dtype",
    "load_label",
    "save_volume",
]


def _load_one(path: Path, series: str | Sequence[str] | None = None) -> Volume:
    """One path read by its reader (:func:`hiend_data.readers.reader_for`: InputError when none)."""
    return reader_for(path).read(path, series)


def load_volume(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    series: str | Sequence[str] | None = None,
) -> Volume:
    """Read a NIfTI volume, a DICOM series, or a list of channel files (nnU-Net ``{case}_0000``, ...).

    Each path is read by its reader (:func:`hiend_data.readers.reader_for`); a path no reader takes is
    an :class:`InputError` saying so. DICOM (the ``hiend-data[dicom]`` extra, :mod:`hiend_data.dicom`):
    a folder holding one series (found recursively), a ``.zip`` of one, or a multi-frame file;
    ``series`` picks a SeriesInstanceUID when the folder holds several (a list of UIDs: used only where
    a folder holds several series). The result is the same kind of :class:`Volume` as for NIfTI (RAS+
    affine, HU after rescale), ``path`` the folder.

    Returns a :class:`Volume` with ``array`` ``[X, Y, Z]`` for one channel, ``[C, X, Y, Z]`` for several
    (a 4-D file's last axis becomes C). A single path reads that one file. The channel files of a case,
    given its ``{case}_0000`` file, are :func:`hiend_data.naming.channel_siblings`
    (``load_volume(channel_siblings(p))``; a gap is an :class:`InputError` naming the first missing
    file): the files discovery groups. Raises :class:`InputError` for empty, truncated or non-NIfTI
    files, 2-D or 5-D images, NaN/inf voxels, non-positive spacing, headers larger than their data and
    channels whose grids disagree.
    """
    if isinstance(path, str | os.PathLike):
        return _load_one(Path(path), series)
    paths = [Path(p) for p in path]
    if not paths:
        raise InputError("load_volume: empty list of channel files")
    if len(paths) == 1:
        return _load_one(paths[0], series)
    vols = [_load_one(p, series) for p in paths]
    first = vols[0]
    for vol in vols:
        if vol.channels != 1:
            raise InputError(f"{vol.path}: a channel file must hold one channel, found {vol.channels}")
        if vol is not first:
            check_same_grid(first, vol)
    arr = np.stack([v.array for v in vols])
    return Volume(array=arr, affine=first.affine, path=first.path, header=first.header, dicom=first.dicom)


def check_oriented(vol: Volume) -> None:
    """InputError naming the file of a NIfTI scan whose header sets neither a qform nor an sform (both
    codes 0): it does not say how its voxels lie in the patient, and nibabel's fallback (ANALYZE's
    radiological x flip) is a guess that can swap left and right, silently, for a model that turns the
    scan to its plan's orientation. The rule of every command that reads a scan to learn from or to
    segment (``preprocess``, ``predict``); one form with a code > 0 is enough (its own output keeps
    the input's forms). DICOM and in-memory volumes always carry their geometry."""
    import nibabel as nib

    hdr = vol.header
    if isinstance(hdr, nib.Nifti1Header) and vol.dicom is None:  # NIfTI-2's header is a subclass
        if int(hdr["qform_code"]) <= 0 and int(hdr["sform_code"]) <= 0:
            raise InputError(
                f"{vol.path}: neither a qform nor an sform is set (both codes 0): the file does not say "
                "where its voxels lie in the patient (left and right could be swapped); set one, e.g. "
                "nibabel's img.set_sform(affine, code=1)"
            )


def check_same_grid(ref: Volume, other: Volume, atol: float = 1e-4) -> None:
    """Raise :class:`InputError` unless ``other`` has ``ref``'s spatial shape and affine (within ``atol`` mm)."""
    if ref.shape != other.shape:
        raise InputError(f"{other.path}: grid {other.shape} disagrees with {ref.path} {ref.shape}")
    if not np.allclose(ref.affine, other.affine, atol=atol, rtol=0):
        diff = float(np.abs(ref.affine - other.affine).max())
        raise InputError(f"{other.path}: affine differs from {ref.path} by up to {diff:.4g} mm")


def label_array(array: np.ndarray, path: object) -> np.ndarray:
    """``array`` as a label map of the smallest unsigned type (uint8 / uint16), or InputError naming ``path``.

    A label map is one 3-D channel of whole numbers in ``0 .. MAX_LABEL`` (65535,
    :data:`hiend_data.limits.MAX_LABEL`); float maps holding only such values are accepted. NaN,
    infinity, fractions, negative values and values above the limit (which an integer cast would wrap
    or a per-label count would have to allocate) are refused before any conversion. The one rule for
    every reader of label maps (preprocessing, ``hiend-eval score``).
    """
    if array.ndim != 3:
        raise InputError(f"{path}: a label map must have one channel, found shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: not a label map: voxel type {array.dtype}")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(
                f"{path}: label map has {bad} NaN or infinite values (labels are integers 0..{MAX_LABEL})"
            )
        frac = int(np.count_nonzero(array != np.round(array)))
        if frac:
            raise InputError(
                f"{path}: label map has {frac} non-integer values (labels must be non-negative integers)"
            )
    lo, hi = (array.min().item(), array.max().item()) if array.size else (0, 0)
    if lo < 0:
        raise InputError(
            f"{path}: label map has negative values (min {lo:g}); labels must be non-negative integers"
        )
    if hi > MAX_LABEL:
        raise InputError(
            f"{path}: label value {hi:g} is above {MAX_LABEL} (labels are class indices 0..{MAX_LABEL})"
        )
    dtype = smallest_label_dtype(int(hi))
    return array if array.dtype == dtype else array.astype(dtype)


def as_label(vol: Volume) -> Volume:
    """Check that ``vol`` is a label map (:func:`label_array`) and give it the smallest unsigned dtype."""
    return Volume(
        array=label_array(vol.array, vol.path),
        affine=vol.affine,
        path=vol.path,
        header=vol.header,
        dicom=vol.dicom,
    )


def smallest_label_dtype(max_value: int) -> np.dtype:
    """uint8, uint16 or int32 (NIfTI has no unsigned 32-bit in every reader), whichever holds ``max_value``."""
    if max_value <= 255:
        return np.dtype(np.uint8)
    if max_value <= 65535:
        return np.dtype(np.uint16)
    if max_value <= 2**31 - 1:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def load_label(path: str | os.PathLike[str], like: Volume | None = None) -> Volume:
    """Read a label map (see :func:`as_label`), checking its grid against ``like`` when given.

    A DICOM Segmentation file (``hiend-data[dicom]``) spans only the slices its frames cover, in its
    own axis order: with ``like`` it is put on ``like``'s grid without interpolation when its voxels
    are voxels of that grid (:func:`hiend_data.geometry.place_on_grid`), else the grid error.

    Which series a SEG labels: when ``like`` was read from a DICOM series (``like.dicom``), the SEG must
    reference that series and share its frame of reference
    (:func:`hiend_data.dicom_seg.check_references`), checked from the headers before any pixel is
    decoded: a SEG drawn on another series of the same grid is refused, not taken as this one's label.
    When ``like`` is NIfTI there is nothing to compare (NIfTI carries no UIDs): the grid check alone
    applies, as for a NIfTI label."""
    path = Path(path)
    if like is not None and like.dicom is not None and is_segmentation_file(path):
        from .dicom_seg import check_references

        series_uid, frame_uid = like.dicom.uids()
        check_references(path, series_uid, frame_uid, like.dicom.path)
    reader = reader_for(path)
    vol = as_label(reader.read(path))
    off_grid = like is not None and (
        vol.shape != like.shape or not np.allclose(like.affine, vol.affine, atol=1e-4, rtol=0)
    )
    if off_grid and reader.partial_labels:  # a DICOM-SEG block of the image's grid
        from .geometry import place_on_grid

        placed = place_on_grid(vol.array, vol.affine, like.shape, like.affine)
        if placed is None:
            raise InputError(
                f"{path}: its frames do not lie on the voxels of {like.path}'s grid {like.shape}, or "
                "label voxels fall outside it"
            )
        vol = Volume(array=placed, affine=np.asarray(like.affine), path=path, header=vol.header)
    if like is not None:
        check_same_grid(like, vol)
    return vol


def save_volume(path: str | os.PathLike[str], array: np.ndarray, like: Volume) -> Path:
    """Write ``array`` (``[X, Y, Z]`` or ``[C, X, Y, Z]``) as NIfTI on ``like``'s grid and affine, atomically.

    Integer and boolean arrays are stored in the smallest integer type holding them; floats as float32.

    Orientation: when ``like`` keeps the header its affine came from (a :func:`load_volume` result:
    ``like.affine`` is the header's own), the output has that header's qform and sform, codes
    included, exactly as the input has them, even where the two disagree: a viewer that reads the
    qform and one that reads the sform each show the output where it shows the input. Only a ``like``
    without such a header (made in code, or its affine changed) gets both forms set to ``like.affine``
    (the header's codes, or 1 where it has none).

    The file appears complete or not at all (:func:`hiend_data.atomic.atomic_path`: a temporary name in
    the same folder, fsync-ed, renamed; on failure ``path`` keeps its old content). Parent folders are
    created. Returns the path written.
    """
    import nibabel as nib

    path = Path(path)
    if not is_image(path):
        raise InputError(f"{path}: output name must end in .nii or .nii.gz")
    array = np.asarray(array)
    if tuple(array.shape[-3:]) != like.shape or array.ndim not in (3, 4):
        raise InputError(f"{path}: array shape {array.shape} does not match the grid {like.shape}")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind in "iu":
        lo = int(array.min()) if array.size else 0
        dtype = (
            smallest_label_dtype(int(array.max()) if array.size else 0)
            if lo >= 0
            else (np.dtype(np.int16) if lo >= -32768 and int(array.max()) <= 32767 else np.dtype(np.int32))
        )
    elif array.dtype.kind == "f":
        dtype = np.dtype(np.float32)
    else:
        raise InputError(f"{path}: cannot store arrays of type {array.dtype}")
    data = np.asarray(array, dtype=dtype)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)
    header, own = header_like(like)
    img = nib.Nifti1Image(data, like.affine, header=header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(np.nan, np.nan)
    img.header["cal_min"], img.header["cal_max"] = 0.0, 0.0  # the source's display range means nothing here
    if header is None:
        img.header.set_xyzt_units("mm", "sec")
    if not own:  # no header of this grid: both forms from the affine
        img.set_qform(like.affine, code=int(img.header["qform_code"]) or 1)
        img.set_sform(like.affine, code=int(img.header["sform_code"]) or 1)
    with atomic_path(path) as tmp:  # tmp keeps the .nii / .nii.gz ending: nibabel picks the format by name
        nib.save(img, str(tmp))
    return path
