"""A slice's pixel data and how its stored values become modality values (HU).

Pixel data (:func:`_check_pixel_data`): integer, grayscale, and in an uncompressed transfer syntax
exactly the bytes the header declares; a TransferSyntaxUID that is no transfer syntax, or a compressed
one whose decoder is not installed, refused naming what to install (:func:`_check_decoder`). Rescale
(:func:`_rescale_of`, :func:`_check_rescale`): RescaleSlope and RescaleIntercept both or neither,
finite, the slope not 0, and all slices of the volume rescaled the same way.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .files import _label
from .identity import _value


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
