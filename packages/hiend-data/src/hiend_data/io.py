"""Reading and writing NIfTI volumes (``.nii`` / ``.nii.gz``) with every check a bad file deserves.

A :class:`Volume` is an array plus the geometry needed to put it back in the world:

* ``array``: ``[X, Y, Z]`` (one channel) or ``[C, X, Y, Z]`` (several), header intensity scaling applied;
* ``affine``: ``(4, 4)`` float64 voxel index -> world millimetres (RAS+, nibabel's convention);
* ``spacing``: voxel size in mm per array axis (the norms of the affine's first three columns);
* ``orientation``: axis codes such as ``("R", "A", "S")`` (where each array axis points in the world);
* ``header``: the source's nibabel header (its qform and sform are what :func:`save_volume` writes
  "like" it); ``dicom``: for a DICOM series, where it was read from (:class:`DicomOrigin`: its UIDs on
  demand, for the checks of a DICOM-SEG label, :func:`load_label`).

Everything that is wrong with a file raises :class:`~hiend_data.errors.InputError` naming it, before
large allocations where the header alone can tell.

File names follow :mod:`hiend_data.naming` (``.nii`` / ``.nii.gz``; the channel files of a case,
:func:`channel_files`); files are written with :mod:`hiend_data.atomic` (whole or not at all).
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .limits import MAX_LABEL, check_volume_bytes
from .naming import channel_siblings, image_suffix, is_dicom_source, is_image

# deflate cannot compress better than about 1032:1, so a header claiming more bytes than that is a lie.
_MAX_DEFLATE_RATIO = 1100


@dataclass(frozen=True)
class DicomOrigin:
    """The DICOM series a :class:`Volume` was read from: the path given to :func:`load_volume` and its
    ``series`` choice. Its UIDs are read from the series' headers only when asked (:meth:`uids`; about
    0.2 s for 300 slices), as only a DICOM-SEG label needs them."""

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


# ----------------------------------------------------------------------------------------- reading


def _open_header(path: Path) -> Any:
    """nibabel image of ``path`` with its header checked; no voxel data read yet."""
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


def _open_dicom(path: Path, series: str | Sequence[str] | None) -> Any:
    """The DICOM scan at ``path`` as an in-memory nibabel image (:mod:`hiend_data.dicom`, imported
    only here, so the ``[dicom]`` extra is needed only for DICOM input)."""
    import importlib.util

    missing = [m for m in ("pydicom", "dicom2nifti") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"{path}: reading DICOM needs the optional extra ({', '.join(missing)} not installed): "
            "pip install 'hiend-data[dicom]'"
        )
    from .dicom import read_dicom

    img = read_dicom(path, series=series)
    check_volume_bytes(img.shape, 4, path, "series holds")
    return img


def _load_one(path: Path, series: str | Sequence[str] | None = None) -> Volume:
    origin = None
    if path.exists() and not is_image(path) and is_dicom_source(path):
        img = _open_dicom(path, series)
        if not _is_seg_file(path):  # an image series (a lone SEG file reads as a label map)
            origin = DicomOrigin(path, series if series is None or isinstance(series, str) else tuple(series))
    elif path.is_dir():
        raise InputError(
            f"{path}: is a folder without DICOM files, expected a NIfTI file (.nii or .nii.gz) "
            "or a DICOM series folder"
        )
    else:
        img = _open_header(path)
    arr = _read_array(path, img)
    _check_finite(path, arr)
    if arr.ndim == 4:
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0)) if arr.shape[-1] > 1 else arr[..., 0]
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(array=arr, affine=affine, path=path, header=img.header, dicom=origin)


def _is_seg_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Segmentation file (header only; False for folders and zips)."""
    from .dicom_seg import is_segmentation

    return path.is_file() and not is_image(path) and is_segmentation(path)


def load_volume(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    series: str | Sequence[str] | None = None,
) -> Volume:
    """Read a NIfTI volume, a DICOM series, or a list of channel files (nnU-Net ``{case}_0000``, ...).

    DICOM (the ``hiend-data[dicom]`` extra, :mod:`hiend_data.dicom`): a folder holding one series (found
    recursively), a ``.zip`` of one, or a multi-frame file; ``series`` picks a SeriesInstanceUID when
    the folder holds several (a list of UIDs: used only where a folder holds several series). The result is the same kind of
    :class:`Volume` as for NIfTI (RAS+ affine, HU after rescale), ``path`` the folder.

    Returns a :class:`Volume` with ``array`` ``[X, Y, Z]`` for one channel, ``[C, X, Y, Z]`` for several
    (a 4-D file's last axis becomes C). A single path reads that one file. The channel files of a case,
    given its ``{case}_0000`` file, are :func:`channel_files` (``load_volume(channel_files(p))``; a gap
    is an :class:`InputError` naming the first missing file): the files discovery groups. Raises
    :class:`InputError` for empty, truncated or non-NIfTI files, 2-D or 5-D images, NaN/inf voxels,
    non-positive spacing, headers larger than their data and channels whose grids disagree.
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
    if like is not None and like.dicom is not None and _is_seg_file(path):
        from .dicom_seg import check_references

        series_uid, frame_uid = like.dicom.uids()
        check_references(path, series_uid, frame_uid, like.dicom.path)
    vol = as_label(_load_one(path))
    off_grid = like is not None and (
        vol.shape != like.shape or not np.allclose(like.affine, vol.affine, atol=1e-4, rtol=0)
    )
    if off_grid and not is_image(path):  # a DICOM-SEG block of the image's grid
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


#: The nnU-Net channel files of the case whose ``_0000`` file is ``path``, channel 0 first, for
#: :func:`load_volume`:
#: ``x_0000.nii.gz`` -> ``[x_0000.nii.gz, x_0001.nii.gz, ...]`` (every ``x_dddd`` of the same extension
#: in its folder); a gap is an :class:`InputError` naming the first missing file; any other file
#: (``x.nii.gz``, ``x_0001.nii.gz``) is returned alone. The rule is :func:`hiend_data.naming.channel_siblings`.
channel_files = channel_siblings


# ----------------------------------------------------------------------------------------- writing


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
    header, own = _header_like(like)
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


#: The NIfTI header fields of the qform and sform (with pixdim: the qform's voxel sizes and qfac)
_FORM_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units")  # fmt: skip


def _header_like(like: Volume) -> tuple[Any, bool]:
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
