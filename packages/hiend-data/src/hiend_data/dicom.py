"""Reading DICOM series (the optional extra ``hiend-data[dicom]``: pydicom and dicom2nifti).

:func:`hiend_data.io.load_volume` hands a path here when :func:`hiend_data.naming.is_dicom_source`
says it is DICOM: a folder holding one series (files found recursively), a ``.zip`` of such a folder, or
one multi-frame file. This module only finds the files, picks the series and refuses what hiend must not
guess about; **dicom2nifti** (on pydicom) sorts the slices along the slice normal (ImagePositionPatient /
ImageOrientationPatient, not file names or InstanceNumber), applies RescaleSlope / RescaleIntercept,
checks the slice increment, the orientation and gantry tilt, and builds the affine. It returns a nibabel
image in nibabel's RAS+ world, so from here on a DICOM series is read exactly like a NIfTI file (the
same checks, orientation codes and left/right guarantees).

Refused with one :class:`~hiend_data.errors.InputError` line naming the folder (or zip, or file):

* no DICOM file at all; only non-image objects (SR, RTSTRUCT, SEG, ...);
* several image series (their SeriesInstanceUIDs and SeriesDescriptions are listed; ``series=`` picks
  one);
* duplicate slice positions; missing slices or uneven spacing (dicom2nifti's tolerance: successive
  position steps equal within 5 % or 0.1 mm); fewer than 4 slices (dicom2nifti's localizer rule);
* gantry tilt (slices not perpendicular to the stack) and mixed slice orientations;
* compressed transfer syntaxes whose decoder is not installed (the message names the package).

Images of the series flagged as localizers (ImageType LOCALIZER, CT projection images) and a minority
orientation of fewer than 4 slices are dropped by dicom2nifti, as scanners store scouts in the series.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_seg import LABELMAP_SEG_SOP_CLASS, SEG_SOP_CLASS, SEG_SOP_CLASSES, read_seg
from .errors import InputError
from .limits import max_volume_bytes

INSTALL = "pip install 'hiend-data[dicom]'"


#: SOP classes that carry pixel data but are not a scan (hiend reads images, not these)
_NOT_SCANS = {
    SEG_SOP_CLASS: "SEG",
    LABELMAP_SEG_SOP_CLASS: "SEG",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}

_D2N_REASONS = {
    "SLICE_INCREMENT_INCONSISTENT": "missing slices or uneven slice spacing",
    "NON_CUBICAL_IMAGE/GANTRY_TILT": (
        "gantry tilt: the slices are not perpendicular to the stack (tilted series are not resampled)"
    ),
    "IMAGE_ORIENTATION_INCONSISTENT": "mixed slice orientations in one series",
    "TOO_FEW_SLICES/LOCALIZER": "fewer than 4 slices (a localizer or a single image, not a volume)",
    "NOT_A_VOLUME": "all slices at the same position",
}


def _require() -> tuple[Any, Any]:
    try:
        import dicom2nifti
        import pydicom
    except ImportError as exc:  # io checks first and says the same in an InputError
        raise ImportError(f"reading DICOM needs the optional extra: {INSTALL} ({exc})") from None
    return pydicom, dicom2nifti


@contextlib.contextmanager
def _unzipped(path: Path) -> Iterator[Path]:
    """A temporary folder holding the extracted ``.zip`` (zip bombs and unsafe names refused)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a readable zip file ({exc})") from None
    with zf, tempfile.TemporaryDirectory(prefix="hiend-dicom-") as tmp:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        total = sum(i.file_size for i in infos)
        if total > 2 * max_volume_bytes():
            raise InputError(f"{path}: the zip unpacks to {total / 2**30:.1f} GiB, beyond the volume limit")
        root = Path(tmp)
        for info in infos:
            target = (root / info.filename).resolve()
            if root.resolve() not in target.parents:
                raise InputError(f"{path}: zip entry {info.filename!r} points outside the archive")
        try:
            zf.extractall(root)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{path}: corrupt zip file ({exc})") from None
        yield root


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _read_headers(where: Path, files: list[Path], headers_only: bool = False) -> list[Any]:
    """Every DICOM dataset among ``files`` (pixel data deferred, or not read with ``headers_only``);
    files that are not DICOM are skipped."""
    pydicom, _ = _require()
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if headers_only:
                    ds = pydicom.dcmread(f, stop_before_pixels=True)
                else:
                    ds = pydicom.dcmread(f, defer_size="4 KB")
        except InvalidDicomError:
            continue  # not DICOM (no 'DICM' preamble): a README, a NIfTI, ...
        except Exception as exc:  # a file that says it is DICOM but does not parse
            raise InputError(f"{where}: {f.name}: corrupt DICOM file ({type(exc).__name__}: {exc})") from None
        out.append(ds)
    return out


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))


def _is_scan(ds: Any, headers_only: bool = False) -> bool:
    """An image (pixel data; read without it: rows and columns) that is not a SEG, RTDOSE, ..."""
    pixels = (
        ("Rows" in ds and "Columns" in ds) if headers_only else ("PixelData" in ds or "FloatPixelData" in ds)
    )
    return pixels and _sop_class(ds) not in _NOT_SCANS


def _kind(ds: Any) -> str:
    sop = _sop_class(ds)
    if sop in _NOT_SCANS:
        return _NOT_SCANS[sop]
    return str(ds.get("Modality", "") or "unknown")


def _is_multiframe(ds: Any) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _describe_series(groups: dict[str, list[Any]]) -> str:
    parts = []
    for uid, members in groups.items():
        desc = str(members[0].get("SeriesDescription", "") or "")
        parts.append(f"{uid or '(no SeriesInstanceUID)'} {desc!r} ({len(members)} files)")
    return "; ".join(parts)


def _pick_series(where: Path, scans: list[Any], series: str | Sequence[str] | None) -> list[Any]:
    groups: dict[str, list[Any]] = {}
    for ds in scans:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if series is not None and (isinstance(series, str) or len(groups) > 1):
        wanted = {series} if isinstance(series, str) else set(series)
        chosen = {uid: members for uid, members in groups.items() if uid in wanted}
        if not chosen:
            raise InputError(
                f"{where}: no series {', '.join(sorted(wanted))}; the folder holds {_describe_series(groups)}"
            )
        groups = chosen
    if len(groups) > 1:
        raise InputError(
            f"{where}: {len(groups)} series in one folder: {_describe_series(groups)}; "
            "pick one with --series UID (series= in load_volume)"
        )
    return next(iter(groups.values()))


def _check_decoder(where: Path, ds: Any) -> None:
    """Refuse a compressed transfer syntax whose decoder is missing, naming what to install."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(
            f"{where}: transfer syntax {uid.name} ({uid}) cannot be decoded by pydicom; "
            "convert the series to an uncompressed transfer syntax"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        pkgs = sorted({w for dep in decoder.missing_dependencies for w in _packages(dep)})
        hint = f"pip install {' '.join(pkgs)}" if pkgs else "install a pydicom decoder plugin"
        raise InputError(
            f"{where}: compressed transfer syntax {uid.name} ({uid}) and no decoder installed "
            f"({needs}): {hint}"
        )


def _packages(dependency: str) -> list[str]:
    """``"pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"`` -> the package names."""
    text = dependency.split("requires", 1)[-1]
    names = [w.strip().split(">=")[0].split("==")[0] for w in text.replace(",", " and ").split(" and ")]
    return [n for n in names if n and n != "numpy"]


def _check_positions(where: Path, series: list[Any]) -> None:
    """Missing geometry or two slices at one position (dicom2nifti would silently drop exact copies)."""
    seen: dict[tuple[float, ...], Any] = {}
    for ds in series:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise InputError(f"{where}: {Path(ds.filename).name} has no {tag}; cannot place the slice")
        pos = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
        if pos in seen:
            raise InputError(
                f"{where}: duplicate slice position {pos} in {Path(seen[pos].filename).name} and "
                f"{Path(ds.filename).name} (two copies or two series mixed)"
            )
        seen[pos] = ds


def _prepare_multiframe(where: Path, ds: Any) -> list[tuple[float, float]]:
    """Checks dicom2nifti's multi-frame path lacks; returns each frame's (slope, intercept).

    dicom2nifti places the frames by InStackPositionNumber and builds the affine from the first and
    last frame in file order, so frames must be stored in stack order at distinct positions. Its
    multi-frame rescale reads only each frame's own PixelValueTransformationSequence (a rescale shared
    by all frames is missed) and overflows on unsigned data with a negative intercept under NumPy 2;
    so the rescale groups are taken out of the frames (in memory) and applied by :func:`read_dicom`.
    """
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        raise InputError(f"{where}: a multi-frame image without per-frame functional groups (no positions)")
    shared = ds.get("SharedFunctionalGroupsSequence")
    default = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    if shared and "PixelValueTransformationSequence" in shared[0]:
        item = shared[0].PixelValueTransformationSequence[0]
        default = (float(item.get("RescaleSlope", 1)), float(item.get("RescaleIntercept", 0)))
        del shared[0].PixelValueTransformationSequence
    scales = []
    seen: dict[tuple[float, ...], int] = {}
    for i, frame in enumerate(frames):
        scale = default
        if "PixelValueTransformationSequence" in frame:
            item = frame.PixelValueTransformationSequence[0]
            scale = (float(item.get("RescaleSlope", 1)), float(item.get("RescaleIntercept", 0)))
            del frame.PixelValueTransformationSequence
        scales.append(scale)
        content = frame.get("FrameContentSequence")
        number = content[0].get("InStackPositionNumber") if content else None
        if number is not None and int(number) != i + 1:
            raise InputError(
                f"{where}: frame {i + 1} has InStackPositionNumber {number}; "
                "frames not stored in stack order are not supported"
            )
        plane = frame.get("PlanePositionSequence")
        if plane and "ImagePositionPatient" in plane[0]:
            pos = tuple(round(float(v), 3) for v in plane[0].ImagePositionPatient)
            if pos in seen:
                raise InputError(
                    f"{where}: duplicate slice position {pos} in frames {seen[pos] + 1} and {i + 1}"
                )
            seen[pos] = i
    return scales


def _rescale_frames(img: Any, scales: list[tuple[float, float]]) -> Any:
    """Stored values -> modality values (HU), frame k being slice k of dicom2nifti's volume."""
    import nibabel as nib

    arr = np.asarray(img.dataobj)
    if all(s == (1.0, 0.0) for s in scales) or arr.ndim != 3 or arr.shape[2] != len(scales):
        return img
    slope = np.array([s[0] for s in scales], dtype=np.float64)
    inter = np.array([s[1] for s in scales], dtype=np.float64)
    return nib.Nifti1Image(arr.astype(np.float64) * slope + inter, img.affine)


def _steps(series: list[Any]) -> str:
    """Range of the gaps between slices along the slice normal, for the message only."""
    try:
        iop = np.asarray([float(v) for v in series[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        d = np.sort([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in series])
        gaps = np.diff(d)
        return f": slice gaps {gaps.min():.4g} to {gaps.max():.4g} mm along the slice normal"
    except Exception:  # noqa: BLE001 - a message detail, never a reason to fail differently
        return ""


def _convert(where: Path, series: list[Any]) -> Any:
    """dicom2nifti's volume (nibabel image, RAS+ affine, rescale applied) with its validations on."""
    _, dicom2nifti = _require()
    from dicom2nifti import settings
    from dicom2nifti.convert_dicom import dicom_array_to_nifti
    from dicom2nifti.exceptions import ConversionError, ConversionValidationError

    for name in ("slicecount", "orientation", "orthogonal", "slice_increment"):
        getattr(settings, f"enable_validate_{name}")()
    settings.disable_resampling()
    quiet = [logging.getLogger(n) for n in ("dicom2nifti", "pydicom")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = dicom_array_to_nifti(series, None, reorient_nifti=False)
    except (ConversionValidationError, ConversionError) as exc:
        code = str(exc)
        why = _D2N_REASONS.get(code, f"cannot assemble a volume ({code})")
        extra = _steps(series) if code == "SLICE_INCREMENT_INCONSISTENT" else ""
        raise InputError(f"{where}: {why}{extra}") from None
    except Exception as exc:
        raise InputError(f"{where}: cannot read the series ({type(exc).__name__}: {exc})") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return result["NII"]


def _compact(img: Any) -> Any:
    """HU as whole numbers come back as float64 from the rescale: store them as int16/int32 when exact."""
    import nibabel as nib

    arr = np.asarray(img.dataobj)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)):
        lo, hi = float(arr.min()), float(arr.max())
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                cast = arr.astype(dtype)
                if np.array_equal(cast, arr):
                    arr = cast
                break
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    out = nib.Nifti1Image(arr, img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    return out


@contextlib.contextmanager
def _series(
    path: Path, series: str | Sequence[str] | None, *, headers_only: bool = False
) -> Iterator[tuple[list[Any], Any]]:
    """The datasets of the one series at ``path`` that hiend reads, checked (everything in the module
    docstring), as ``(datasets, multiframe dataset or None)``, while a zip's files still exist.

    A lone DICOM Segmentation file (``path`` itself, not a folder) comes back as ``([seg], None)``.
    ``headers_only``: the datasets are read without their pixel data (:func:`series_headers`).
    """
    _require()
    if not path.exists():
        raise FileNotFoundError(2, "no such file or directory", str(path))
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(_unzipped(path)) if path.suffix.lower() == ".zip" else path
        datasets = _read_headers(path, _files(root), headers_only)
        if not datasets:
            raise InputError(f"{path}: no DICOM files found")
        if path.is_file() and len(datasets) == 1 and _sop_class(datasets[0]) in SEG_SOP_CLASSES:
            yield datasets, None
            return
        scans = [ds for ds in datasets if _is_scan(ds, headers_only)]
        if not scans:
            kinds: dict[str, int] = {}
            for ds in datasets:
                kinds[_kind(ds)] = kinds.get(_kind(ds), 0) + 1
            found = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
            hint = "; give a SEG file itself to read it as a label map" if "SEG" in kinds else ""
            raise InputError(
                f"{path}: only non-image DICOM objects ({found}); expected an image series{hint}"
            )
        chosen = _pick_series(path, scans, series)
        multi = [ds for ds in chosen if _is_multiframe(ds)]
        if multi and len(chosen) > 1:
            raise InputError(
                f"{path}: a series of {len(chosen)} files of which {len(multi)} multi-frame; "
                "expected one multi-frame file or single-frame slices"
            )
        if not headers_only:
            for ds in chosen:
                _check_decoder(path, ds)
        if not multi:
            if len(chosen) == 1:
                raise InputError(
                    f"{path}: a single-slice DICOM image, not a volume (give the folder of its series)"
                )
            _check_positions(path, chosen)
        yield chosen, (multi[0] if multi else None)


def series_headers(path: str | os.PathLike[str], series: str | Sequence[str] | None = None) -> list[Any]:
    """The pydicom datasets (no pixel data) of the series :func:`read_dicom` reads at ``path``: the
    single-frame slices (in no particular order) or the one multi-frame file. What a DICOM Segmentation
    of the scan references (:func:`hiend_data.dicom_seg.write_seg`). Same refusals as :func:`read_dicom`.
    """
    path = Path(path)
    with _series(path, series, headers_only=True) as (chosen, multi):
        if multi is None and len(chosen) == 1 and _sop_class(chosen[0]) in SEG_SOP_CLASSES:
            raise InputError(f"{path}: a DICOM Segmentation, not an image series")
        return chosen


def read_dicom(path: str | os.PathLike[str], series: str | Sequence[str] | None = None) -> Any:
    """The scan at ``path`` (a series folder, a ``.zip`` of one, or a multi-frame file) as an in-memory
    nibabel ``Nifti1Image`` (RAS+ affine, rescale applied). ``series``: a SeriesInstanceUID (that series
    is read, and must be there), or a list of UIDs (used only where the folder holds several series:
    the one of them present; a folder of one series is read as it is; ``preprocess --series``).

    Raises :class:`InputError` naming ``path`` for everything in the module docstring, and
    :class:`ImportError` (with the pip command) when the ``dicom`` extra is not installed.
    """
    path = Path(path)
    with _series(path, series) as (chosen, multi):
        if multi is None and len(chosen) == 1 and _sop_class(chosen[0]) in SEG_SOP_CLASSES:
            return read_seg(path, chosen[0])
        scales = _prepare_multiframe(path, multi) if multi is not None else []
        img = _convert(path, chosen)
        if len(img.shape) != 3:
            raise InputError(f"{path}: {len(img.shape)}-D series {tuple(img.shape)}, expected a 3-D volume")
        return _compact(_rescale_frames(img, scales) if scales else img)
