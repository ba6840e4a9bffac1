"""Reading DICOM series (the optional extra ``hiend-data[dicom]``: pydicom and dicom2nifti).

:func:`hiend_data.io.load_volume` hands a path here when :func:`hiend_data.naming.is_dicom_source`
says it is DICOM: a folder holding one series, a ``.zip`` of such a folder, or one multi-frame file.
This module finds the files, picks the series and refuses what hiend must not guess about;
**dicom2nifti** (on pydicom) then sorts the slices, applies RescaleSlope / RescaleIntercept and builds
the affine (first slice's ImagePositionPatient, slice step = (last - first) / (n - 1)), returned as a
nibabel image in RAS+, so from here on a DICOM series is read exactly like a NIfTI file.

**Which files.** Every file under the folder, at any depth; symbolic links to files and folders are
followed (also out of the folder), each real folder is walked once (no loops) and a file reached by two
paths is read once, as is a byte-for-byte copy under another name (same SOPInstanceUID; two different
files under one SOPInstanceUID are refused); names starting with ``.`` are skipped; a broken link is
refused (it may be a lost slice). Files without the DICOM Part 10 marker are skipped; one that has it
but does not parse is refused. A ``.zip`` is unpacked into a temporary folder first (see
:func:`_unzipped` for its limits).

**One series.** The image objects (not SR, RTSTRUCT, SEG, RTDOSE, ...) grouped by SeriesInstanceUID;
several are refused unless ``series=`` picks one. Every file of the chosen series must agree on
PatientID, StudyInstanceUID, FrameOfReferenceUID, Modality and SOPClassUID, and the slices the volume is
built from on Rows, Columns, PixelSpacing and how they are rescaled (:func:`_check_rescale`): a
SeriesInstanceUID shared by another patient's files (a copy, a symlink, a badly anonymised export) is
refused, never merged.

Refused with one :class:`~hiend_data.errors.InputError` line naming the folder (zip, file) and, where
one file is at fault, that file (its path below the folder):

* no DICOM file at all; only non-image objects;
* several image series (their SeriesInstanceUIDs and SeriesDescriptions are listed; ``series=`` picks
  one); files of one series that disagree on patient, study, frame of reference, size or pixel spacing;
* an image file of the series without pixel data (a slice lost in transfer), wherever it sits; an
  image without SeriesInstanceUID (a file cut in its header); pixel data that is float, colour, or
  (uncompressed) not Rows x Columns x BitsAllocated / 8 bytes (:func:`_check_pixel_data`); a
  TransferSyntaxUID that is no transfer syntax;
* RescaleSlope 0 or not finite, RescaleIntercept not finite, one without the other, slices (frames)
  rescaled different ways;
* missing or unusable geometry: no ImagePositionPatient / ImageOrientationPatient / PixelSpacing, a
  value that is not a finite number, PixelSpacing not > 0, ImageOrientationPatient not two unit vectors
  at right angles (to 1e-3); SliceThickness is not used (the step comes from the positions);
* duplicate slice positions; **missing slices or uneven spacing**: every slice's ImagePositionPatient
  must lie within ``max(0.1 mm, 10 % of the slice step)`` of where the affine puts it (first slice +
  k x step, the step fitted first to last as dicom2nifti does); measured in 3-D, so drift along the
  normal and off the stack line both count, and no slice's voxels are placed farther than that;
  fewer than 4 slices (dicom2nifti's localizer rule);
* gantry tilt (slices not perpendicular to the stack) and mixed slice orientations (dicom2nifti); a
  slice of another orientation, or flagged as a localizer, in the volume's own plane
  (:func:`_volume_slices`); a volume assembled from other slices than those checked;
* compressed transfer syntaxes whose decoder is not installed (the message names the package);
* a ``.zip`` whose members declare more than the volume limit in total (``HIEND_MAX_VOLUME_BYTES``), a
  member inflating more than 200:1 (above 16 MiB), a member longer than it declares, two members of
  one name, a name leading outside the folder, a symbolic link entry, a zip inside the zip
  (:func:`_unzipped`).

Images of the series flagged as localizers (ImageType LOCALIZER, CT projection images) and a minority
orientation of fewer than 4 slices are dropped (dicom2nifti's rule, as scanners store scouts in the
series) when their plane is more than ``SCOUT_MIN_ANGLE`` degrees from the volume's; the checks on size,
spacing, rescale and positions apply to the slices that remain. Not detectable: slices missing at
either end of the stack (the rest is a valid, shorter series).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_seg import LABELMAP_SEG_SOP_CLASS, SEG_SOP_CLASS, SEG_SOP_CLASSES, read_seg
from .errors import InputError
from .limits import ENV, max_volume_bytes
from .naming import is_dicom_zip

INSTALL = "pip install 'hiend-data[dicom]'"

#: a slice may lie this far from where the affine puts it: max(mm, fraction x the slice step)
POSITION_TOLERANCE_MM = 0.1
POSITION_TOLERANCE_STEP = 0.10
#: ImageOrientationPatient: each vector's length within 1 +- this, their dot product within +- this
ORIENTATION_TOLERANCE = 1e-3
#: fewer than 4 slices of another orientation are dropped as a scout only when their plane is more than
#: this many degrees from the volume's (else they are a damaged slice of the volume: refused)
SCOUT_MIN_ANGLE = 30.0
#: a zip member declaring more than ZIP_RATIO_FROM bytes may be at most ZIP_MAX_RATIO times its
#: compressed size (DICOM pixel data deflates a few times; deflate's ceiling is about 1030:1)
ZIP_RATIO_FROM = 16 * 2**20
ZIP_MAX_RATIO = 200


#: SOP classes that carry pixel data but are not a scan (hiend reads images, not these)
_NOT_SCANS = {
    SEG_SOP_CLASS: "SEG",
    LABELMAP_SEG_SOP_CLASS: "SEG",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}

_D2N_REASONS = {
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
    """A temporary folder holding the extracted ``.zip``.

    Refused from the archive's directory, before anything is written: members declaring more than
    :func:`~hiend_data.limits.max_volume_bytes` in total (``HIEND_MAX_VOLUME_BYTES``), a member above
    ``ZIP_RATIO_FROM`` bytes declaring more than ``ZIP_MAX_RATIO`` times its compressed size (a zip bomb),
    two members of one name (one would overwrite the other), a name leading outside the folder, a
    symbolic link (stored by ``zip -y``: it would unpack as a small text file and its slice be skipped).
    A member that is itself a zip (by name or content) is refused too: its slices would be skipped.
    Declared sizes can lie, so each member is inflated in chunks and refused as soon as it yields more
    than it declared: at most the declared total ever reaches the disk.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a readable zip file ({exc})") from None
    with zf, tempfile.TemporaryDirectory(prefix="hiend-dicom-") as tmp:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        total, limit = sum(i.file_size for i in infos), max_volume_bytes()
        if total > limit:
            raise InputError(
                f"{path}: the zip's members declare {total / 2**20:.1f} MiB unpacked, more than the volume "
                f"limit of {limit / 2**20:.1f} MiB (set {ENV} to raise it)"
            )
        for info in infos:
            if info.file_size > ZIP_RATIO_FROM and info.file_size > ZIP_MAX_RATIO * max(
                info.compress_size, 1
            ):
                raise InputError(
                    f"{path}: zip member {info.filename!r} inflates {info.compress_size} bytes to "
                    f"{info.file_size / 2**20:.1f} MiB (more than {ZIP_MAX_RATIO}:1): a zip bomb, not a DICOM file"
                )
        root = Path(tmp).resolve()
        seen: set[str] = set()
        for info in infos:
            target = (root / info.filename).resolve()
            if root not in target.parents:
                raise InputError(f"{path}: zip entry {info.filename!r} points outside the archive")
            if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(
                    f"{path}: zip entry {info.filename!r} is a symbolic link (links inside a zip are not "
                    "followed: a slice would be lost); zip the files themselves"
                )
            if str(target) in seen:
                raise InputError(f"{path}: two zip entries named {info.filename!r}")
            seen.add(str(target))
        try:
            for info in infos:
                _inflate(path, zf, info, (root / info.filename).resolve())
        except (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
            raise InputError(f"{path}: corrupt or unsupported zip file ({exc})") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot unpack the zip into {tmp} ({exc.strerror or exc})") from None
        yield root


def _inflate(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """One member to ``target``, stopping as soon as it yields more bytes than it declared; a member
    that is itself a zip (named ``*.zip`` or starting with a zip header) refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    nested = InputError(
        f"{path}: zip entry {info.filename!r} is itself a zip (nested archives are not opened: its "
        "slices would be lost); unpack it first"
    )
    if info.filename.lower().endswith(".zip"):
        raise nested
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(2**20):
            if not written and chunk.startswith(b"PK\x03\x04"):
                raise nested
            written += len(chunk)
            if written > info.file_size:
                raise InputError(
                    f"{path}: zip member {info.filename!r} inflates beyond the {info.file_size} bytes it declares"
                )
            dst.write(chunk)


def _files(where: Path, root: Path) -> list[Path]:
    """The files to read at ``root`` (a file: itself), sorted by path below ``root``: every file at any
    depth, symbolic links to files and folders followed, each real folder walked once (a link to an
    ancestor cannot loop) and each real file taken once; entries named ``.*`` skipped; a broken link
    refused (it may stand for a slice)."""
    if root.is_file():
        return [root]
    out: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            p = Path(entry.path)
            try:
                st = p.stat()  # through links
            except FileNotFoundError:
                raise InputError(
                    f"{where}: {_below(root, p)} is a broken symbolic link (its target does not exist)"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                subfolders.append(p)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key not in seen_files or not st.st_ino:
                    seen_files.add(key)
                    out.append(p)
        stack.extend(reversed(subfolders))
    return sorted(out, key=lambda p: p.relative_to(root).parts)


def _below(root: Path, p: Path) -> str:
    """``p`` as a path below ``root`` (a zip's member name), for messages."""
    try:
        return p.relative_to(root).as_posix() if p != root else p.name
    except ValueError:
        return p.name


def _label(ds: Any) -> str:
    """The file a dataset came from, as named in messages (its path below the folder or zip)."""
    return getattr(ds, "_hiend_name", None) or Path(str(getattr(ds, "filename", "") or "?")).name


def _read_headers(where: Path, root: Path, files: list[Path], headers_only: bool = False) -> list[Any]:
    """Every DICOM dataset among ``files`` (pixel data deferred, or not read with ``headers_only``);
    files that are not DICOM are skipped, except a zip holding DICOM files (refused: hiend does not open
    archives inside a series, and skipping it would lose its slices)."""
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
            if is_dicom_zip(f):
                raise InputError(
                    f"{where}: {_below(root, f)} is a zip of DICOM files among the series' files (its "
                    "slices would be left out); unpack it in place or move it out"
                ) from None
            continue  # not DICOM (no 'DICM' preamble): a README, a NIfTI, ...
        except Exception as exc:  # a file that says it is DICOM but does not parse
            raise InputError(
                f"{where}: {_below(root, f)}: corrupt DICOM file ({type(exc).__name__}: {exc})"
            ) from None
        ds._hiend_name = _below(root, f)
        out.append(ds)
    return out


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))


def _has_pixels(ds: Any) -> bool:
    return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _is_scan(ds: Any, headers_only: bool = False) -> bool:
    """An image (pixel data; read without it: rows and columns) that is not a SEG, RTDOSE, ..."""
    pixels = ("Rows" in ds and "Columns" in ds) if headers_only else _has_pixels(ds)
    return pixels and _sop_class(ds) not in _NOT_SCANS


def _is_image_object(ds: Any, headers_only: bool = False) -> bool:
    """A scan, or a file that should be one: an ``... Image Storage`` SOP class (or none, with rows and
    columns) whether or not its pixel data is there."""
    from pydicom.uid import UID

    sop = _sop_class(ds)
    if sop in _NOT_SCANS:
        return False
    if _is_scan(ds, headers_only):
        return True
    return "Image Storage" in UID(sop).name if sop else ("Rows" in ds and "Columns" in ds)


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


def _transfer_syntax(ds: Any) -> Any:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _check_decoder(where: Path, ds: Any) -> None:
    """Refuse a TransferSyntaxUID that is no transfer syntax (a damaged or lying file meta), and a
    compressed one whose decoder is missing, naming what to install."""
    from pydicom.pixels import get_decoder

    uid = _transfer_syntax(ds)
    if uid is None:
        return
    if not uid.is_transfer_syntax:
        raise InputError(
            f"{where}: {_label(ds)}: TransferSyntaxUID {uid!r} is not a transfer syntax pydicom knows "
            "(a damaged file meta?)"
        )
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(
            f"{where}: {_label(ds)}: transfer syntax {uid.name} ({uid}) cannot be decoded by pydicom; "
            "convert the series to an uncompressed transfer syntax"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        pkgs = sorted({w for dep in decoder.missing_dependencies for w in _packages(dep)})
        hint = f"pip install {' '.join(pkgs)}" if pkgs else "install a pydicom decoder plugin"
        raise InputError(
            f"{where}: {_label(ds)}: compressed transfer syntax {uid.name} ({uid}) and no decoder "
            f"installed ({needs}): {hint}"
        )


def _check_pixel_data(where: Path, ds: Any) -> None:
    """One slice's (or multi-frame file's) pixel data as hiend reads it: integer ``PixelData`` (not
    float, which dicom2nifti would drop), one sample per pixel (grayscale), and, in an uncompressed
    transfer syntax, exactly ``Rows x Columns x BitsAllocated / 8 x NumberOfFrames`` bytes (one pad
    byte allowed): shorter is a file cut short, longer a header that lies about the image size."""
    who = _label(ds)
    if "PixelData" not in ds:
        raise InputError(
            f"{where}: {who}: float pixel data (FloatPixelData / DoubleFloatPixelData) is not read; "
            "expected integer PixelData"
        )
    samples = ds.get("SamplesPerPixel", 1)
    if samples != 1:
        raise InputError(
            f"{where}: {who}: SamplesPerPixel {_value(samples)} (a colour image); expected grayscale (1)"
        )
    uid = _transfer_syntax(ds)
    if uid is not None and uid.is_transfer_syntax and uid.is_compressed:
        return  # encapsulated frames: their decoder checks them
    try:
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) * int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: {who}: unusable image size ({exc})") from None
    expected = (bits + 7) // 8
    elem = ds.get_item("PixelData")
    length = elem.length if elem.value is None else len(elem.value)
    if elem.value is None and getattr(elem, "value_tell", None) is not None:  # deferred: what the file holds
        with contextlib.suppress(OSError, TypeError):
            length = min(length, os.path.getsize(ds.filename) - elem.value_tell)
    if length not in (expected, expected + 1):
        say = "undefined" if length == 0xFFFFFFFF else str(length)
        raise InputError(
            f"{where}: {who}: PixelData holds {say} bytes, expected {expected} (Rows {ds.Rows} x Columns "
            f"{ds.Columns} x {ds.BitsAllocated} bits x {ds.get('NumberOfFrames', 1) or 1} frames): "
            "a file cut short or a header that does not match its pixels"
        )


def _packages(dependency: str) -> list[str]:
    """``"pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"`` -> the package names."""
    text = dependency.split("requires", 1)[-1]
    names = [w.strip().split(">=")[0].split("==")[0] for w in text.replace(",", " and ").split(" and ")]
    return [n for n in names if n and n != "numpy"]


def _numbers(where: Path, who: str, tag: str, value: Any, count: int) -> np.ndarray:
    """``value`` (a DICOM multi-value) as ``count`` finite floats, else InputError naming ``who``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {who}: {tag} {_shown_value(value)} is not {count} numbers") from None
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise InputError(f"{where}: {who}: {tag} {_shown_value(value)} is not {count} finite numbers")
    return out


def _shown_value(value: Any) -> str:
    try:
        return "[" + ", ".join(str(v) for v in value) + "]"
    except TypeError:
        return repr(value)


def _geometry(where: Path, who: str, ipp: Any, iop: Any, spacing: Any) -> tuple[np.ndarray, ...]:
    """(position, orientation, pixel spacing) checked: finite numbers, PixelSpacing > 0 (a negative one
    would mirror the image), ImageOrientationPatient two unit vectors at right angles."""
    for tag, value in (
        ("ImagePositionPatient", ipp),
        ("ImageOrientationPatient", iop),
        ("PixelSpacing", spacing),
    ):
        if value is None:
            raise InputError(f"{where}: {who} has no {tag}; cannot place the slice")
    pos = _numbers(where, who, "ImagePositionPatient", ipp, 3)
    ori = _numbers(where, who, "ImageOrientationPatient", iop, 6)
    spc = _numbers(where, who, "PixelSpacing", spacing, 2)
    if not np.all(spc > 0):
        raise InputError(
            f"{where}: {who}: PixelSpacing {_shown_value(spacing)} must be > 0 (mm between pixels)"
        )
    row, col = ori[:3], ori[3:]
    tol = ORIENTATION_TOLERANCE
    if abs(np.linalg.norm(row) - 1) > tol or abs(np.linalg.norm(col) - 1) > tol or abs(row @ col) > tol:
        raise InputError(
            f"{where}: {who}: ImageOrientationPatient {_shown_value(iop)} is not two unit vectors at right "
            f"angles (to {tol:g})"
        )
    return pos, ori, spc


def _frame_geometry(where: Path, ds: Any) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(who, position, orientation, spacing)`` of each frame of a multi-frame file, each value taken
    where dicom2nifti takes it (the frame's functional groups, else the shared ones, else the top level)."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def find(groups: Sequence[Any], seq: str, tag: str) -> Any:
        for g in groups:
            if g is None:
                continue
            if seq in g and g[seq].value and tag in g[seq].value[0]:
                return g[seq].value[0][tag].value
        for g in groups:
            if g is not None and tag in g:
                return g[tag].value
        return ds[tag].value if tag in ds else None

    out = []
    for i, frame in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
        who = f"{_label(ds)} frame {i + 1}"
        groups = (frame, shared)
        geo = _geometry(
            where,
            who,
            find((frame,), "PlanePositionSequence", "ImagePositionPatient"),
            find(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            find(groups, "PixelMeasuresSequence", "PixelSpacing"),
        )
        out.append((who, *geo))
    return out


def _check_same(where: Path, series: list[Any], tags: Sequence[str], what: str) -> None:
    """Every dataset of ``series`` holds the first one's values of ``tags`` (numbers compared to 6
    significant digits, a missing value as empty), else InputError naming both values and a file of each."""
    for tag in tags:
        first = _value(series[0].get(tag))
        for ds in series[1:]:
            other = _value(ds.get(tag))
            if other != first:
                raise InputError(
                    f"{where}: {what}: {tag} {first} ({_label(series[0])}) and {other} ({_label(ds)}); "
                    "one series must not mix them"
                )


def _value(v: Any) -> str:
    """A tag's value as shown and compared: ``'text'``, ``512``, ``[0.7, 0.7]``."""
    if v is None:
        return "''"
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "[" + ", ".join(_value(x) for x in v) + "]"
    try:
        return f"{float(v):.6g}" if not isinstance(v, str) else repr(v.strip())
    except (TypeError, ValueError):
        return repr(str(v).strip())


def _volume_slices(where: Path, series: list[Any], orientations: list[np.ndarray]) -> list[int]:
    """Indices of the slices dicom2nifti builds the volume from, in its order: without localizers
    (ImageType LOCALIZER, CT PROJECTION IMAGE) and, where several orientations are present, without
    those of fewer than 4 slices; sorted along the axis of the largest position range.

    Such a minority, and a localizer, is left out only when it lies in another plane (a scout: its
    plane more than ``SCOUT_MIN_ANGLE`` degrees from the volume's); one in (nearly) the volume's own
    plane is refused, not silently left out (it may be the volume's first or last slice): a slice with
    another orientation there is tilted, mirrored or rotated in plane, and a localizer there is a
    slice of the volume flagged wrongly."""
    scouts, keep = [], []
    for i, ds in enumerate(series):
        kind = [str(t).upper() for t in (ds.get("ImageType") or [])]
        if "LOCALIZER" in kind or ("CT" in str(ds.get("Modality", "")) and "PROJECTION IMAGE" in kind):
            scouts.append(i)
        else:
            keep.append(i)
    groups: list[list[int]] = []
    for i in keep:
        for g in groups:
            if np.allclose(orientations[i], orientations[g[0]], rtol=0.001, atol=0.001):
                g.append(i)
                break
        else:
            groups.append([i])
    if len(groups) > 1:
        keep = [i for g in groups if len(g) >= 4 for i in g]
    if not keep:
        return keep
    main = orientations[keep[0]]
    for i in scouts + [g[0] for g in groups if len(g) < 4]:
        angle = _plane_angle(orientations[i], main)
        if angle > SCOUT_MIN_ANGLE:
            continue
        what = (
            f"flagged as a localizer (ImageType {_value(series[i].get('ImageType'))})"
            if i in scouts
            else f"ImageOrientationPatient {_shown_value(np.round(orientations[i], 4))}, not the other "
            f"slices' {_shown_value(np.round(main, 4))}"
        )
        raise InputError(
            f"{where}: {_label(series[i])}: {what}, in a plane {angle:.2g} degrees from the volume's "
            f"(a scout's is more than {SCOUT_MIN_ANGLE:g} away): a tilted, mirrored or mislabelled slice "
            "of the volume, not left out silently"
        )
    return keep


def _plane_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees (0 to 90) between the planes of two ImageOrientationPatient values."""
    na, nb = np.cross(a[:3], a[3:]), np.cross(b[:3], b[3:])
    cos = abs(float(na @ nb)) / max(float(np.linalg.norm(na) * np.linalg.norm(nb)), 1e-12)
    return float(np.degrees(np.arccos(min(cos, 1.0))))


def _check_stack(where: Path, who: list[str], pos: np.ndarray, ori: np.ndarray) -> None:
    """Every slice at its place on the affine's line: slice k of n (sorted) must lie within
    ``max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_STEP x step)`` of ``first + k (last - first) / (n - 1)``
    (3-D distance: uneven gaps, missing slices and drift off the stack line all count). This bounds the
    position error of every slice's voxels in the affine dicom2nifti builds; a per-gap rule does not."""
    n = len(pos)
    if n < 2:
        return
    step = (pos[-1] - pos[0]) / (n - 1)
    size = float(np.linalg.norm(step))
    if size == 0:
        return  # all at one position: refused as duplicates
    err = pos - (pos[0] + np.arange(n)[:, None] * step)
    dist = np.linalg.norm(err, axis=1)
    k = int(np.argmax(dist))
    tol = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_STEP * size)
    if dist[k] <= tol:
        return
    normal = np.cross(ori[:3], ori[3:])
    along = abs(float(err[k] @ normal))
    gaps = np.diff(pos @ normal)
    raise InputError(
        f"{where}: missing slices or uneven slice spacing: {who[k]} (slice {k + 1} of {n}) lies "
        f"{dist[k]:.3g} mm from where the volume's affine puts it ({along:.3g} mm along the slice normal), "
        f"more than the tolerance of {tol:.3g} mm (max {POSITION_TOLERANCE_MM:g} mm, "
        f"{POSITION_TOLERANCE_STEP:.0%} of the {size:.4g} mm slice step): slice gaps "
        f"{np.abs(gaps).min():.4g} to {np.abs(gaps).max():.4g} mm along the slice normal"
    )


def _check_geometry(where: Path, chosen: list[Any], multi: Any) -> int | None:
    """Geometry of the one series: each slice's (or frame's) values usable, the volume's slices of one
    size, pixel spacing and rescale (:func:`_check_rescale`), and every slice where the affine puts it
    (:func:`_check_stack`). Returns how many slices the volume must have (None: dicom2nifti refuses)."""
    if multi is not None:
        frames = _frame_geometry(where, multi)
        if not frames:
            return None
        declared = multi.get("NumberOfFrames", 1)
        if _value(declared) != str(len(frames)):
            raise InputError(
                f"{where}: {_label(multi)}: NumberOfFrames {_value(declared)} but {len(frames)} per-frame "
                "functional groups"
            )
        who = [f[0] for f in frames]
        for name, _, _, spc in frames[1:]:
            if not np.allclose(spc, frames[0][3], rtol=1e-4, atol=0):
                raise InputError(
                    f"{where}: frames of different PixelSpacing: {_shown_value(frames[0][3])} ({who[0]}) and "
                    f"{_shown_value(spc)} ({name})"
                )
        _check_positions(where, who, [f[1] for f in frames])
        if all(np.allclose(f[2], frames[0][2], rtol=0.001, atol=0.001) for f in frames):
            _check_stack(where, who, np.array([f[1] for f in frames]), frames[0][2])
        return len(frames)
    geo = [_geometry(where, _label(ds), ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                     ds.get("PixelSpacing")) for ds in chosen]  # fmt: skip
    _check_positions(where, [_label(ds) for ds in chosen], [g[0] for g in geo])
    keep = _volume_slices(where, chosen, [g[1] for g in geo])
    if len(keep) < 4:
        return None  # dicom2nifti refuses: fewer than 4 slices
    used = [chosen[i] for i in keep]
    _check_same(
        where, used, ("Rows", "Columns", "PixelSpacing"), "slices of different sizes or pixel spacing"
    )
    _check_rescale(where, used)
    if not all(np.allclose(geo[i][1], geo[keep[0]][1], rtol=0.001, atol=0.001) for i in keep):
        return None  # dicom2nifti refuses: mixed slice orientations
    pos = np.array([geo[i][0] for i in keep])
    order = np.argsort(pos[:, int(np.argmax(np.ptp(pos, axis=0)))], kind="stable")  # dicom2nifti's sort
    _check_stack(where, [_label(used[j]) for j in order], pos[order], geo[keep[0]][1])
    return len(keep)


def _rescale_of(where: Path, who: str, item: Any) -> tuple[float, float] | None:
    """``item``'s (RescaleSlope, RescaleIntercept) (a slice, or a PixelValueTransformationSequence
    item), None where it holds neither. One without the other, a value that is not a finite number and
    a slope of 0 (every voxel the intercept) are refused."""
    has = ("RescaleSlope" in item, "RescaleIntercept" in item)
    if not any(has):
        return None
    if not all(has):
        there, missing = ("RescaleSlope", "RescaleIntercept")[:: 1 if has[0] else -1]
        raise InputError(f"{where}: {who} has {there} but no {missing}; cannot rescale its values")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slope, intercept = float(item.RescaleSlope), float(item.RescaleIntercept)
    except (TypeError, ValueError):
        raise InputError(
            f"{where}: {who}: RescaleSlope {_value(item.RescaleSlope)} / RescaleIntercept "
            f"{_value(item.RescaleIntercept)} are not numbers"
        ) from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise InputError(
            f"{where}: {who}: RescaleSlope {slope:g} / RescaleIntercept {intercept:g}: the slope must be a "
            "finite non-zero number and the intercept finite"
        )
    return slope, intercept


def _check_rescale(where: Path, used: list[Any]) -> None:
    """Each slice's stored values become modality values (HU) its own way, one slice at a time (each
    slice's own slope and intercept: :func:`_rescale_of`); all slices must say how, the same way: all
    with RescaleSlope/RescaleIntercept, all with a ModalityLUTSequence, or none (stored values as they
    are). A slice missing them amid rescaled ones would keep its stored values among HU."""

    def how(ds: Any) -> str:
        scale = _rescale_of(where, _label(ds), ds)
        if ds.get("ModalityLUTSequence"):
            return "a ModalityLUTSequence"
        return "RescaleSlope/RescaleIntercept" if scale else "no rescale (neither RescaleSlope nor a LUT)"

    first = how(used[0])
    for ds in used[1:]:
        other = how(ds)
        if other != first:
            raise InputError(
                f"{where}: slices rescaled differently: {_label(used[0])} has {first}, {_label(ds)} has "
                f"{other}; stored values and modality values (HU) would be mixed"
            )


def _check_positions(where: Path, who: list[str], positions: list[np.ndarray]) -> None:
    """Two slices (frames) at one position, to 1e-3 mm (dicom2nifti would silently drop exact copies)."""
    seen: dict[tuple[float, ...], str] = {}
    for name, p in zip(who, positions, strict=True):
        pos = tuple(round(float(v), 3) for v in p)
        if pos in seen:
            raise InputError(
                f"{where}: duplicate slice position {pos} in {seen[pos]} and {name} (two copies or two series mixed)"
            )
        seen[pos] = name


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
    label = _label(ds)
    default = _rescale_of(where, label, ds) or (1.0, 0.0)
    if shared and shared[0].get("PixelValueTransformationSequence"):
        item = shared[0].PixelValueTransformationSequence[0]
        default = _rescale_of(where, f"{label} shared functional groups", item) or default
        del shared[0].PixelValueTransformationSequence
    own = [bool(f.get("PixelValueTransformationSequence")) for f in frames]
    if any(own) and not all(own):
        k = own.index(not own[0]) + 1
        raise InputError(
            f"{where}: {label}: frames rescaled differently: frame 1 {'has' if own[0] else 'has no'} "
            f"PixelValueTransformationSequence, frame {k} {'has none' if own[0] else 'has one'}"
        )
    scales = []
    seen: dict[tuple[float, ...], int] = {}
    for i, frame in enumerate(frames):
        scale = default
        if own[i]:
            item = frame.PixelValueTransformationSequence[0]
            scale = _rescale_of(where, f"{label} frame {i + 1}", item) or default
            del frame.PixelValueTransformationSequence
        scales.append(scale)
        content = frame.get("FrameContentSequence")
        number = content[0].get("InStackPositionNumber") if content else None
        if content and number is None:  # dicom2nifti places frames by it: an AttributeError there
            raise InputError(
                f"{where}: frame {i + 1} has a FrameContentSequence without InStackPositionNumber"
            )
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


def _convert(where: Path, series: list[Any]) -> Any:
    """dicom2nifti's volume (nibabel image, RAS+ affine, rescale applied) with its validations on."""
    _, dicom2nifti = _require()
    from dicom2nifti import settings
    from dicom2nifti.convert_dicom import dicom_array_to_nifti
    from dicom2nifti.exceptions import ConversionError, ConversionValidationError

    for name in ("slicecount", "orientation", "orthogonal"):
        getattr(settings, f"enable_validate_{name}")()
    settings.disable_validate_slice_increment()  # :func:`_check_stack` bounds every slice instead
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
        raise InputError(f"{where}: {why}") from None
    except Exception as exc:
        raise InputError(
            f"{where}: {_culprit(series)}cannot read the series ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return result["NII"]


def _culprit(series: list[Any]) -> str:
    """``"NAME: "`` of the first dataset whose pixel data does not decode (after a failed conversion,
    to name the file at fault), else ``""``."""
    import copy

    for ds in series:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                copy.deepcopy(ds).pixel_array  # noqa: B018
        except Exception:
            return f"{_label(ds)}: "
    return ""


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
        datasets = _read_headers(path, root, _files(path, root), headers_only)
        if not datasets:
            raise InputError(f"{path}: no DICOM files found")
        if path.is_file() and len(datasets) == 1 and _sop_class(datasets[0]) in SEG_SOP_CLASSES:
            yield datasets, None, None
            return
        images = _unique_instances(path, [ds for ds in datasets if _is_image_object(ds, headers_only)])
        if not images:
            kinds: dict[str, int] = {}
            for ds in datasets:
                kinds[_kind(ds)] = kinds.get(_kind(ds), 0) + 1
            found = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
            hint = "; give a SEG file itself to read it as a label map" if "SEG" in kinds else ""
            raise InputError(
                f"{path}: only non-image DICOM objects ({found}); expected an image series{hint}"
            )
        for ds in images:
            if not str(ds.get("SeriesInstanceUID", "") or "").strip():
                raise InputError(
                    f"{path}: {_label(ds)}: an image without SeriesInstanceUID (a file cut short, or one "
                    "that does not parse as it claims?)"
                )
        chosen = _pick_series(path, images, series)
        for ds in chosen:
            if not _is_scan(ds, headers_only):
                raise InputError(
                    f"{path}: {_label(ds)}: an image of the series without pixel data "
                    "(a slice lost or cut short in transfer?)"
                )
        _check_same(path, chosen, ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"),
                    "files of two patients, studies or frames of reference in one series")  # fmt: skip
        _check_same(path, chosen, ("Modality", "SOPClassUID"), "images of two kinds in one series")
        multi = [ds for ds in chosen if _is_multiframe(ds)]
        if multi and len(chosen) > 1:
            raise InputError(
                f"{path}: a series of {len(chosen)} files of which {len(multi)} multi-frame; "
                "expected one multi-frame file or single-frame slices"
            )
        if not headers_only:
            for ds in chosen:
                _check_decoder(path, ds)
                _check_pixel_data(path, ds)
        if not multi and len(chosen) == 1:
            raise InputError(
                f"{path}: a single-slice DICOM image, not a volume (give the folder of its series)"
            )
        slices = _check_geometry(path, chosen, multi[0] if multi else None)
        yield chosen, (multi[0] if multi else None), slices


def _unique_instances(where: Path, images: list[Any]) -> list[Any]:
    """``images`` with each SOPInstanceUID once: files sharing one must be byte-for-byte copies (the
    same slice saved twice, read once); two different files under one SOPInstanceUID (an edited copy,
    a re-export mixed in) are refused, naming both."""
    out: list[Any] = []
    first: dict[str, Any] = {}
    for ds in images:
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        if not uid:
            out.append(ds)
            continue
        if uid not in first:
            first[uid] = ds
            out.append(ds)
            continue
        try:
            same = Path(first[uid].filename).read_bytes() == Path(ds.filename).read_bytes()
        except (OSError, TypeError):
            same = False
        if not same:
            raise InputError(
                f"{where}: {_label(first[uid])} and {_label(ds)}: two different files with one "
                f"SOPInstanceUID {uid} (an edited copy or two exports mixed?)"
            )
    return out


def series_headers(path: str | os.PathLike[str], series: str | Sequence[str] | None = None) -> list[Any]:
    """The pydicom datasets (no pixel data) of the series :func:`read_dicom` reads at ``path``: the
    single-frame slices (in no particular order) or the one multi-frame file. What a DICOM Segmentation
    of the scan references (:func:`hiend_data.dicom_seg.write_seg`). Same refusals as :func:`read_dicom`.
    """
    path = Path(path)
    with _series(path, series, headers_only=True) as (chosen, multi, _):
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
    with _series(path, series) as (chosen, multi, slices):
        if multi is None and len(chosen) == 1 and _sop_class(chosen[0]) in SEG_SOP_CLASSES:
            return read_seg(path, chosen[0])
        scales = _prepare_multiframe(path, multi) if multi is not None else []
        img = _convert(path, chosen)
        if len(img.shape) != 3:
            raise InputError(f"{path}: {len(img.shape)}-D series {tuple(img.shape)}, expected a 3-D volume")
        if slices is not None and img.shape[2] != slices:
            # dicom2nifti left slices out (or added some) that hiend's checks counted: never guess which
            raise InputError(
                f"{path}: the volume was assembled from {img.shape[2]} slices, not the {slices} checked; "
                "a slice the converter could not use?"
            )
        return _compact(_rescale_frames(img, scales) if scales else img)
