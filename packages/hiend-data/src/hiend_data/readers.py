"""Readers: the one table of the image formats hiend reads, and the lookup "which reader reads this?".

:data:`READERS` lists one :class:`Reader` per format, in the order they are asked: today NIfTI
(:data:`NIFTI`) and DICOM (:data:`DICOM`, the ``hiend-data[dicom]`` extra). :func:`reader_for` is the
explicit lookup every reader of scans goes through (:func:`hiend_data.io.load_volume`, label maps,
discovery, ``hiend-model predict``'s inputs): the first reader whose :meth:`Reader.matches` takes the
path reads it, and a path no reader takes is one :class:`~hiend_data.errors.InputError` line saying so
and naming what the readers take ("not a NIfTI file name (.nii or .nii.gz) nor a DICOM series ...: no
reader for it"), never a guess that anything not NIfTI must be DICOM.

A reader has

* ``name`` (``"NIfTI"``), ``what`` (one input in messages: ``"a NIfTI file name (.nii or .nii.gz)"``)
  and ``plural`` (many in messages: ``".nii/.nii.gz files"``);
* ``suffixes``: the endings of its file names (NIfTI: :data:`hiend_data.naming.IMAGE_SUFFIXES`; DICOM:
  ``.zip`` and ``.dcm``, though a DICOM file is one by its content, whatever its name), left out of
  the case a file names (:func:`case_name_of`);
* ``channel_files``: whether its files are named ``{case}_{dddd}{suffix}`` and grouped into cases by
  :mod:`hiend_data.naming` (NIfTI) or name a case each by themselves (a DICOM series folder or zip);
* ``reads_folders``: whether a folder can be one of its inputs (a DICOM series folder);
* ``partial_labels``: whether its label maps may cover only part of an image's grid (a DICOM-SEG spans
  the slices its frames cover), to be placed on the image's grid by :func:`hiend_data.io.load_label`;
* ``matches(path)``: whether it reads ``path`` (NIfTI: by name alone; DICOM: an existing ``.zip``, a
  file with the DICOM marker, a folder holding DICOM files);
* ``read(path, series)``: the :class:`~hiend_data.volume.Volume` at ``path`` (``series``: the DICOM
  SeriesInstanceUID(s) to pick; other formats ignore it), with every refusal of its format.

**Adding a format** (say NRRD): write a class with these members whose ``read`` opens the file into a
nibabel-like image (``dataobj``, ``affine`` in RAS+, ``header``) and returns
:func:`~hiend_data.volume.image_volume` of it (so the voxel rules are the same for every format);
append an instance to :data:`READERS`, before any reader whose ``matches`` would also take its files.
If its files name cases and channels (``{case}_0000.nrrd``), also add its suffix to
:data:`hiend_data.naming.IMAGE_SUFFIXES` (naming sits below this table: the DICOM reader's own modules
use it) so that discovery, ``predict`` and ``score`` group and name them. Messages ("no reader",
"folder holds no ...") are built from the table and name the new format by themselves.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .errors import InputError
from .limits import check_volume_bytes
from .naming import DICOM_NAME_SUFFIXES, IMAGE_SUFFIXES, case_name, is_dicom_file, is_dicom_source, is_image
from .nifti import open_nifti
from .volume import DicomOrigin, Volume, image_volume

__all__ = [
    "Reader",
    "NiftiReader",
    "DicomReader",
    "NIFTI",
    "DICOM",
    "READERS",
    "find_reader",
    "reader_for",
    "no_reader_message",
    "is_segmentation_file",
    "case_name_of",
]

Series = str | Sequence[str] | None


class Reader(Protocol):
    """One image format hiend reads (see the module docstring for each member)."""

    name: str
    what: str
    plural: str
    suffixes: tuple[str, ...]
    channel_files: bool
    reads_folders: bool
    partial_labels: bool

    def matches(self, path: Path) -> bool:
        """Whether this reader reads ``path``."""
        ...

    def read(self, path: Path, series: Series = None) -> Volume:
        """The volume at ``path``; InputError naming it for anything wrong with it."""
        ...


class NiftiReader:
    """NIfTI-1 and NIfTI-2 files, by name (:func:`hiend_data.nifti.open_nifti` checks them)."""

    name = "NIfTI"
    what = "a NIfTI file name (.nii or .nii.gz)"
    plural = ".nii/.nii.gz files"
    suffixes = IMAGE_SUFFIXES
    channel_files = True
    reads_folders = False
    partial_labels = False

    def matches(self, path: Path) -> bool:
        """True for a name ending in ``.nii`` or ``.nii.gz``, whatever the file holds."""
        return is_image(path)

    def read(self, path: Path, series: Series = None) -> Volume:
        return image_volume(path, open_nifti(path))


class DicomReader:
    """DICOM series (:mod:`hiend_data.dicom`): a folder holding one series, a ``.zip`` of one, a
    multi-frame file, or a DICOM Segmentation file (read as a label map on its own grid)."""

    name = "DICOM"
    what = "a DICOM series (folder, .zip or DICOM file)"
    plural = "DICOM series"
    suffixes = DICOM_NAME_SUFFIXES
    channel_files = False
    reads_folders = True
    partial_labels = True

    def matches(self, path: Path) -> bool:
        """True for an existing ``.zip``, a DICOM file (not a NIfTI name) or a folder holding one at
        any depth (:func:`hiend_data.naming.is_dicom_source`)."""
        return path.exists() and is_dicom_source(path)

    def read(self, path: Path, series: Series = None) -> Volume:
        """The series (or SEG) at ``path``, read only here so the ``[dicom]`` extra is needed only for
        DICOM input; ``series`` picks a SeriesInstanceUID where a folder holds several."""
        missing = [m for m in ("pydicom", "dicom2nifti") if importlib.util.find_spec(m) is None]
        if missing:
            raise InputError(
                f"{path}: reading DICOM needs the optional extra ({', '.join(missing)} not installed): "
                "pip install 'hiend-data[dicom]'"
            )
        from .dicom import read_dicom

        img = read_dicom(path, series=series)
        check_volume_bytes(img.shape, 4, path, "series holds")
        origin = None
        if not is_segmentation_file(path):  # an image series (a lone SEG file reads as a label map)
            origin = DicomOrigin(path, series if series is None or isinstance(series, str) else tuple(series))
        return image_volume(path, img, origin)


NIFTI = NiftiReader()
DICOM = DicomReader()
#: Every format hiend reads, in the order :func:`find_reader` asks them.
READERS: tuple[Reader, ...] = (NIFTI, DICOM)


def find_reader(path: str | os.PathLike[str]) -> Reader | None:
    """The first reader of :data:`READERS` that takes ``path``, or None."""
    path = Path(path)
    return next((r for r in READERS if r.matches(path)), None)


def no_reader_message(path: str | os.PathLike[str]) -> str:
    """The one line for a path no reader takes, naming what the readers take."""
    path = Path(path)
    whats = [r.what for r in READERS]
    if path.is_dir():
        holds = " or ".join(f"{r.name} files" for r in READERS if r.reads_folders)
        return f"{path}: is a folder without {holds}: no reader for it (expected {' or '.join(whats)})"
    return f"{path}: not {' nor '.join(whats)}: no reader for it"


def reader_for(path: str | os.PathLike[str]) -> Reader:
    """The reader of ``path`` (:func:`find_reader`): FileNotFoundError when it does not exist,
    InputError (:func:`no_reader_message`) when no reader takes it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "no such file", str(path))
    reader = find_reader(path)
    if reader is None:
        raise InputError(no_reader_message(path))
    return reader


def is_segmentation_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM Segmentation file (header only; False for folders, zips, NIfTI names
    and files without the DICOM marker, so pydicom is imported only for DICOM files)."""
    path = Path(path)
    if not path.is_file() or is_image(path) or not is_dicom_file(path):
        return False
    from .dicom_seg import is_segmentation

    return is_segmentation(path)


def case_name_of(path: str | os.PathLike[str], reader: Reader) -> str:
    """The case a source read by ``reader`` names by itself: for a format with channel files,
    :func:`hiend_data.naming.case_name` (``x_0000.nii.gz`` -> ``x``); else a folder's name (``.`` or
    ``..``: the folder's resolved name) or the file's name without the reader's suffix (any letter case;
    other dots, as in UID-named files, stay): ``ct.zip`` -> ``ct``."""
    path = Path(path)
    if reader.channel_files:
        return case_name(path) or path.name
    if path.is_dir():
        return path.name if path.name not in ("", ".", "..") else path.resolve().name
    name = path.name
    for suffix in reader.suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
