"""The entry points: :func:`read_dicom` (the volume) and :func:`series_headers` (what a SEG references).

Both go through :func:`_series`, which runs every check of :mod:`hiend_data.dicom` in order: files
found and read (:mod:`.files`), the series picked and its identity checked (:mod:`.identity`), pixel
data and decoders (:mod:`.pixels`), geometry and the stack rule (:mod:`.geometry`); :func:`read_dicom`
then assembles the volume (:mod:`.assemble`). A lone DICOM Segmentation file is read as a label map
(:func:`hiend_data.dicom_seg.read_seg`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..dicom_seg import SEG_SOP_CLASSES, read_seg
from ..errors import InputError
from .assemble import _compact, _convert, _prepare_multiframe, _rescale_frames
from .files import _files, _label, _read_headers, _require, _unzipped
from .geometry import _check_geometry
from .identity import (
    _check_same,
    _is_image_object,
    _is_multiframe,
    _is_scan,
    _kind,
    _pick_series,
    _sop_class,
    _unique_instances,
)
from .pixels import _check_decoder, _check_pixel_data


@contextlib.contextmanager
def _series(
    path: Path, series: str | Sequence[str] | None, *, headers_only: bool = False
) -> Iterator[tuple[list[Any], Any, int | None]]:
    """The datasets of the one series at ``path`` that hiend reads, checked (everything in the module
    docstring), as ``(datasets, multiframe dataset or None, slices the volume must have or None)``,
    while a zip's files still exist.

    A lone DICOM Segmentation file (``path`` itself, not a folder) comes back as ``([seg], None, None)``.
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
