"""Case naming: the one rule every hiend package uses to turn file names into cases.

nnU-Net's convention: the channels of a case are files ``{case}_0000{ext}``, ``{case}_0001{ext}``, ...
in one folder; a label or a prediction is ``{case}{ext}``. hiend reads it like this, everywhere
(``hiend-data`` discovery and :func:`hiend_data.load_volume`'s channel lookup, ``hiend-model predict``,
``hiend-eval score``):

* **extension**: one of :data:`IMAGE_SUFFIXES` (``.nii.gz``, ``.nii``); :func:`strip_suffix` gives the stem,
  or None for a name that is not an image file. Which format reads a path is
  :mod:`hiend_data.readers`' table (:func:`~hiend_data.readers.reader_for`).
* **DICOM** (read by :mod:`hiend_data.dicom`, the ``[dicom]`` extra): a file is DICOM by its content
  (the ``DICM`` marker after the 128-byte preamble, :func:`is_dicom_file`), whatever its name; a scan
  is a folder holding one series (:func:`is_dicom_source`), a ``.zip`` of one, or one multi-frame file.
  In a folder of cases, every folder that directly holds DICOM files is one case named by the folder
  (:func:`dicom_folders`).
* **one file, by name alone** (:func:`case_name`): a trailing ``_0000`` is dropped (channel 0 names its
  case), any other name is the case: ``liver_003_0000.nii.gz`` -> ``liver_003``,
  ``liver_003.nii.gz`` -> ``liver_003``, ``x_0001.nii.gz`` -> ``x_0001``.
* **files of one folder** (:func:`group_channels`): a ``{case}_0000`` file and its siblings
  ``{case}_0001``, ``{case}_0002``, ... form one case of that many channels, in channel order. The
  channels must run without a gap from ``_0000``: a gap is an :class:`InputError` naming the first
  missing file (a case is never silently split or cut short). A ``_dddd`` file without a ``_0000``
  sibling is a one-channel case named in full (``x_0001``), and so is any other image file.

**Case names become file names** (in the cache, ``predict --out``, ``score`` reports, run folders), and
they come from untrusted text: dataset.json keys, manifest lines, file names. :func:`safe_case_name`
is the one gate: a name with a path separator, ``..``, an absolute path, a leading dot, NUL or other
control characters, or an empty name is an :class:`InputError` naming the source; :func:`check_unique`
refuses names that differ only in case or Unicode normalisation (one file on macOS and Windows
filesystems); :func:`path_inside` joins a checked name to a folder and verifies the resolved path stays
in it (a symlinked subfolder cannot redirect a write).

Torch-free and numpy-free (``pathlib``, ``re`` and ``unicodedata`` only).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "CHANNEL_RE",
    "ChannelGroup",
    "strip_suffix",
    "image_suffix",
    "is_image",
    "split_channel",
    "case_name",
    "channel_file",
    "group_channels",
    "channel_siblings",
    "DICOM_SUFFIXES",
    "is_dicom_file",
    "is_dicom_source",
    "dicom_folders",
    "is_dicom_zip",
    "dicom_case_name",
]

#: File endings of the images whose files name cases and channels (``{case}_0000.nii.gz``): the NIfTI
#: reader's (:data:`hiend_data.readers.READERS`, whose ``channel_files`` formats these are; a format
#: added there with channel files adds its endings here). Longest first, so ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: ``{case}_{dddd}``: an nnU-Net channel file's stem.
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ChannelGroup:
    """One case: ``name`` and its ``files`` (channel 0 first; one file for a one-channel case)."""

    name: str
    files: tuple[Path, ...]


#: Zip archives of a DICOM series folder are read as that folder.
DICOM_SUFFIXES: tuple[str, ...] = (".zip",)
_DICOM_MAGIC_AT = 128


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file whose bytes 128..131 are ``DICM`` (a DICOM Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_AT)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_zip(path: str | os.PathLike[str], look: int = 8) -> bool:
    """True when ``path`` is a zip archive whose first DICOM-looking entry among its first ``look`` files
    is a DICOM Part 10 file (only those entries' first 132 bytes are read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            entries = [
                i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith((".", "__MACOSX"))
            ]
            for info in entries[:look]:
                with zf.open(info) as fh:
                    head = fh.read(_DICOM_MAGIC_AT + 4)
                if head[_DICOM_MAGIC_AT:] == b"DICM":
                    return True
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        return False
    return False


def walk_files(folder: Path, broken: Callable[[Path], None] | None = None) -> list[Path]:
    """The regular files below ``folder`` at any depth, sorted by their path below it: symbolic links
    to files and folders followed (a series folder linked into a dataset is found), each real folder
    walked once (a link to an ancestor cannot loop) and each real file taken once, entries named ``.*``
    skipped. A broken link is passed to ``broken`` (which may raise: the DICOM reader refuses one, since
    it may stand for a slice), else skipped. The one walk of discovery and of the DICOM reader."""
    out: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            st = here.stat()
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError:  # unreadable, vanished or a loop the kernel refuses: nothing to find there
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            p = Path(entry.path)
            try:
                st = p.stat()  # through links
            except FileNotFoundError:
                if broken is not None:
                    broken(p)
                continue
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                subfolders.append(p)
            elif stat.S_ISREG(st.st_mode) and ((st.st_dev, st.st_ino) not in seen_files or not st.st_ino):
                seen_files.add((st.st_dev, st.st_ino))
                out.append(p)
        stack.extend(reversed(subfolders))
    return sorted(out, key=lambda p: p.relative_to(folder).parts)


def is_dicom_source(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is read as DICOM: a ``.zip``, a DICOM file (not a NIfTI name), or a folder
    holding at least one DICOM file (searched recursively; stops at the first)."""
    path = Path(path)
    if path.is_dir():
        return any(not is_image(f) and is_dicom_file(f) for f in walk_files(path))
    if is_image(path):
        return False
    return path.name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(path)


def dicom_folders(root: str | os.PathLike[str], skip: Iterable[Path] = ()) -> list[Path]:
    """The DICOM cases under ``root``, sorted: folders (``root`` itself included) that directly hold
    DICOM files, and ``.zip`` archives (a zipped series each) outside such folders. Hidden entries and
    the files in ``skip`` (already known images) are not opened."""
    known = set(skip)
    found: set[Path] = set()
    zips: list[Path] = []
    for f in walk_files(Path(root)):
        if f.parent in found or f in known or is_image(f):
            continue
        if f.name.lower().endswith(".zip"):
            if is_dicom_zip(f):
                zips.append(f)
        elif is_dicom_file(f):
            found.add(f.parent)
    return sorted(found | {z for z in zips if z.parent not in found})


#: what a DICOM file's or archive's case name leaves out (any letter case)
DICOM_NAME_SUFFIXES: tuple[str, ...] = (".zip", ".dcm")


def dicom_case_name(path: str | os.PathLike[str]) -> str:
    """The case a DICOM source names: a series folder's name (``.`` or ``..``: the folder's resolved
    name), a zip's or a DICOM file's name without ``.zip`` / ``.dcm`` (any letter case; other dots, as in
    UID-named files, stay). Used by discovery, ``hiend-model predict`` and ``hiend-eval score``."""
    path = Path(path)
    if path.is_dir():
        return path.name if path.name not in ("", ".", "..") else path.resolve().name
    name = path.name
    for suffix in DICOM_NAME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def image_suffix(name: str | os.PathLike[str]) -> str | None:
    """The image extension of a file name (``".nii.gz"`` / ``".nii"``), or None."""
    base = Path(name).name
    for suffix in IMAGE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return suffix
    return None


def is_image(name: str | os.PathLike[str]) -> bool:
    """True when the file name ends in an image extension of :data:`IMAGE_SUFFIXES` (``.nii`` or
    ``.nii.gz``): a name that can be a channel file. It says nothing about other formats: which reader
    reads a path, and "no reader" for one none takes, is :func:`hiend_data.readers.reader_for`."""
    return image_suffix(name) is not None


def strip_suffix(name: str | os.PathLike[str]) -> str | None:
    """``"ct_0000.nii.gz"`` -> ``"ct_0000"``; None for a name without an image extension."""
    base = Path(name).name
    suffix = image_suffix(base)
    return None if suffix is None else base[: -len(suffix)]


def split_channel(stem: str) -> tuple[str, int] | None:
    """``"ct_0002"`` -> ``("ct", 2)``; None for a stem without a ``_dddd`` ending."""
    m = CHANNEL_RE.match(stem)
    return (m["case"], int(m["channel"])) if m else None


def case_name(name: str | os.PathLike[str]) -> str | None:
    """The case a single file names, by its name alone: its stem without a trailing ``_0000``.

    ``"liver_003_0000.nii.gz"`` -> ``"liver_003"``; ``"liver_003.nii.gz"`` -> ``"liver_003"``;
    ``"x_0001.nii.gz"`` -> ``"x_0001"`` (channel 1 names a case only beside its ``_0000``); None for a
    name that is not an image file.
    """
    stem = strip_suffix(name)
    if stem is None:
        return None
    split = split_channel(stem)
    return split[0] if split is not None and split[1] == 0 else stem


def channel_file(folder: str | os.PathLike[str], case: str, channel: int, suffix: str = ".nii.gz") -> Path:
    """``folder / f"{case}_{channel:04d}{suffix}"``."""
    return Path(folder) / f"{case}_{channel:04d}{suffix}"


def _gap_error(case: str, present: Sequence[int], first: Path) -> InputError:
    missing = min(set(range(max(present) + 1)) - set(present))
    suffix = image_suffix(first) or ""
    gap = channel_file(first.parent, case, missing, suffix)
    return InputError(
        f"{gap}: channel file missing; case {case!r} has channels "
        f"{', '.join(f'_{c:04d}' for c in sorted(present))} (channels must run from _0000 "
        "without a gap)"
    )


def group_channels(files: Iterable[str | os.PathLike[str]]) -> list[ChannelGroup]:
    """Cases of a list of image files (the module's rule), in the order their first file appears.

    Files are grouped per folder; the same file named twice counts once. Raises :class:`InputError`
    when a case's channels have a gap, or when two files of one folder give the same channel of a case
    (``x_0000.nii`` beside ``x_0000.nii.gz``). Files that are not images are the caller's business:
    they raise InputError here too, so filter them first.
    """
    paths = list(dict.fromkeys(Path(f) for f in files))
    groups: dict[tuple[Path, str], dict[int, Path]] = {}
    for f in paths:
        stem = strip_suffix(f)
        if stem is None:
            raise InputError(f"{f}: not an image file name (expected {' or '.join(IMAGE_SUFFIXES)})")
        split = split_channel(stem)
        if split is not None:
            chans = groups.setdefault((f.parent.resolve(), split[0]), {})
            if split[1] in chans:
                raise InputError(
                    f"{f} and {chans[split[1]]}: two files for channel {split[1]} of case {split[0]!r}"
                )
            chans[split[1]] = f
    out: list[ChannelGroup] = []
    done: set[Path] = set()
    for f in paths:
        if f in done:
            continue
        stem = strip_suffix(f)
        assert stem is not None
        split = split_channel(stem)
        chans = groups.get((f.parent.resolve(), split[0])) if split is not None else None
        if split is not None and chans is not None and 0 in chans:
            order = sorted(chans)
            if order != list(range(len(order))):
                raise _gap_error(split[0], order, chans[0])
            members = tuple(chans[c] for c in order)
            out.append(ChannelGroup(split[0], members))
            done.update(members)
        else:
            out.append(ChannelGroup(stem, (f,)))
            done.add(f)
    return out


def channel_siblings(path: str | os.PathLike[str]) -> list[Path]:
    """All channel files of the case ``path`` belongs to, read from its folder (the module's rule).

    ``x_0000.nii.gz`` -> ``[x_0000.nii.gz, x_0001.nii.gz, ...]`` (every ``x_dddd`` of the same extension
    beside it, gap-checked); a file that is not a ``_0000`` channel is returned alone, as is a path whose
    folder cannot be listed.
    """
    path = Path(path)
    stem = strip_suffix(path)
    split = split_channel(stem) if stem is not None else None
    if split is None or split[1] != 0:
        return [path]
    suffix = image_suffix(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return [path]
    siblings = [path]
    for f in sorted(entries):
        other = strip_suffix(f) if image_suffix(f) == suffix else None
        s = split_channel(other) if other is not None else None
        if s is not None and s[0] == split[0] and f.name != path.name:
            siblings.append(f)
    group = [g for g in group_channels(siblings) if path in g.files]
    return list(group[0].files) if group else [path]


#: the longest case name accepted, in characters ...
MAX_NAME_CHARS = 200
#: ... and in UTF-8 bytes: file systems allow 255 bytes a name, and a case name gets suffixes of up to
#: 15 bytes (``_seg.npy``, ``_0000.nii.gz``); 80 CJK characters (240 bytes) pass, 81 do not
MAX_NAME_BYTES = 240


def safe_case_name(name: object, source: str | os.PathLike[str] = "case name") -> str:
    """``name`` if it can be used as one file name in any folder; InputError naming ``source`` if not.

    Refused: a non-string or empty name, ``.`` / ``..`` or any leading dot (hidden files, ``..``
    segments), ``/`` or ``\\`` anywhere (path separators on any OS), a drive or absolute path, NUL and
    other control characters (C0, DEL, C1), and names longer than :data:`MAX_NAME_CHARS` characters
    or :data:`MAX_NAME_BYTES` bytes of UTF-8.
    """
    if not isinstance(name, str):
        raise InputError(f"{source}: case name {name!r} is not text")
    why = None
    if not name.strip():
        why = "is empty"
    elif name.startswith("."):
        why = "starts with '.' (a hidden file, '.' or '..')"
    elif "/" in name or "\\" in name or (os.sep in name) or (os.altsep and os.altsep in name):
        why = "contains a path separator"
    elif re.match(r"^[A-Za-z]:", name) or os.path.isabs(name):
        why = "is an absolute path"
    elif any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        why = "contains a control character"
    elif len(name) > MAX_NAME_CHARS:
        why = f"is longer than {MAX_NAME_CHARS} characters"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        why = f"is longer than {MAX_NAME_BYTES} bytes in UTF-8 (file names are limited to 255 bytes)"
    if why is not None:
        raise InputError(f"{source}: case name {name!r} {why}; a case name must be one plain file name")
    return name


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def check_unique(names: Iterable[str], source: str | os.PathLike[str] = "case names") -> None:
    """InputError naming ``source`` and both names if two differ only in letter case or Unicode
    normalisation (``"Liver"`` / ``"liver"``; NFC / NFD forms): they would be one file on case-insensitive
    or normalising file systems, and one would silently replace the other."""
    seen: dict[str, str] = {}
    for name in names:
        key = _folded(name)
        if key in seen and seen[key] != name:
            raise InputError(
                f"{source}: case names {seen[key]!r} and {name!r} differ only in letter case or Unicode form "
                "(one file on many file systems)"
            )
        seen.setdefault(key, name)


def path_inside(folder: str | os.PathLike[str], name: str, suffix: str = "") -> Path:
    """``folder / (name + suffix)`` after :func:`safe_case_name`, checked to resolve inside ``folder``
    (InputError naming the path otherwise, e.g. when an existing entry is a symlink leading out)."""
    folder = Path(folder)
    path = folder / (safe_case_name(name, folder) + suffix)
    root = folder.resolve()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise InputError(f"{path}: resolves to {target}, outside {root}; refusing to write there")
    return path
