"""The checked series into a volume: dicom2nifti's conversion, multi-frame rescale, compact dtype.

:func:`_convert` runs dicom2nifti with its slice-count, orientation and orthogonality validations on
(its slice-increment check off: :func:`~hiend_data.dicom.geometry._check_stack` bounds every slice
instead; no resampling) and turns its refusals into one line. A multi-frame file is checked and its
rescale taken out first (:func:`_prepare_multiframe`) and applied after (:func:`_rescale_frames`);
whole-number HU are stored as int16/int32 (:func:`_compact`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .files import _label, _require
from .pixels import _rescale_of

_D2N_REASONS = {
    "NON_CUBICAL_IMAGE/GANTRY_TILT": (
        "gantry tilt: the slices are not perpendicular to the stack (tilted series are not resampled)"
    ),
    "IMAGE_ORIENTATION_INCONSISTENT": "mixed slice orientations in one series",
    "TOO_FEW_SLICES/LOCALIZER": "fewer than 4 slices (a localizer or a single image, not a volume)",
    "NOT_A_VOLUME": "all slices at the same position",
}


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
