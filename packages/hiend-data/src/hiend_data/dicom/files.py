"""Finding and reading a series' files: the folder walk, a ``.zip`` unpacked, every file's header.

The rules (module docstring of :mod:`hiend_data.dicom`, **Which files**): every file at any depth,
symbolic links followed, each real folder walked once and each real file taken once, ``.*`` skipped, a
broken link refused; files without the DICOM Part 10 marker skipped, one that has it but does not parse
refused, a zip of DICOM files among the series' files refused. A ``.zip`` given as the input is
unpacked into a temporary folder under the limits of :func:`_unzipped`. Each dataset read keeps the
name it is called by in messages (its path below the folder or zip: :func:`_label`). Also
:func:`_require`, the one place that imports the optional extra.
"""

from __future__ import annotations

import contextlib
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..limits import ENV, max_volume_bytes
from ..naming import is_dicom_zip, walk_files

INSTALL = "pip install 'hiend-data[dicom]'"
#: a zip member declaring more than ZIP_RATIO_FROM bytes may be at most ZIP_MAX_RATIO times its
#: compressed size (DICOM pixel data deflates a few times; deflate's ceiling is about 1030:1)
ZIP_RATIO_FROM = 16 * 2**20
ZIP_MAX_RATIO = 200


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
    """The files to read at ``root`` (a file: itself): :func:`hiend_data.naming.walk_files` (every
    file at any depth, links followed, each real folder and file once, ``.*`` skipped, sorted), with a
    broken link refused (it may stand for a slice)."""
    if root.is_file():
        return [root]

    def refuse(p: Path) -> None:
        raise InputError(f"{where}: {_below(root, p)} is a broken symbolic link (its target does not exist)")

    return walk_files(root, broken=refuse)


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
