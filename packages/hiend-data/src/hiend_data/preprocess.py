"""One scan through the plan (reorient, resample, normalise, crop) and predictions back to its grid.

The chain for a case with spatial shape ``S0`` and affine ``A0``:

1. reorient to ``plan.orientation`` (axis permutation/flips, exact): shape ``S1``;
2. resample to ``plan.spacing`` (image linear, label nearest): shape ``S2``;
3. intensity (CT window to [0, 1] or MRI z-score);
4. crop to the foreground box ``[start, stop)`` of ``S2`` (labelled voxels always inside): shape ``S3``.

:class:`PreprocessRecord` keeps every number of that chain, so :func:`restore_label` takes a label
map of shape ``S3`` back to ``S0`` (pad with background, nearest resampling, inverse reorientation),
where ``save_volume(path, out, like=original)`` lands it on the input's own grid and affine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from . import geometry as geo
from .errors import InputError, shown
from .intensity import ct_window, zscore
from .io import Volume, as_label, check_same_grid, count_nonfinite, spacing_of
from .limits import check_volume_bytes
from .plan import Plan

#: a CT scan holds air (-1000 HU) around the body; a scan whose lowest value is above this is
#: probably not CT (MR intensities start at 0): warned about, since the CT window saturates it
NOT_CT_ABOVE = -500.0
#: fewer voxels than this along every axis after resampling is refused: nothing to segment, and the
#: sign of a spacing given in another unit (``--spacing 1500``, micrometres meant: 1x1x1 voxels); a
#: thin slab (few voxels along one axis) is fine
MIN_RESAMPLED_VOXELS = 4

Int3 = tuple[int, int, int]
Float3 = tuple[float, float, float]


class PreprocessRecord(BaseModel):
    """Everything needed to map between a case's original grid and its preprocessed array.

    Shapes are spatial ``(X, Y, Z)``; affines are ``4 x 4`` nested lists (voxel -> world RAS+ mm).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None  # path of the (first channel's) input file
    original_shape: Int3  # S0
    original_affine: list[list[float]]
    original_orientation: str  # e.g. "LPS"
    ornt: list[tuple[int, int]]  # nibabel orientation transform S0 -> S1
    reoriented_shape: Int3  # S1
    resampled_shape: Int3  # S2
    crop_start: Int3  # box in S2
    crop_stop: Int3
    affine: list[list[float]]  # affine of the preprocessed (cropped) array
    spacing: Float3  # its voxel size in mm (close to the plan's; exact extent kept)
    channels: int = 1
    intensity: list[tuple[float, float]] = []  # MRI: (mean, std) per channel; CT: []
    obliquity_deg: float = 0.0

    @property
    def shape(self) -> Int3:
        """Spatial shape ``S3`` of the preprocessed array."""
        return tuple(b - a for a, b in zip(self.crop_start, self.crop_stop, strict=True))  # type: ignore[return-value]


@dataclass
class PreprocessedCase:
    """Output of :func:`preprocess_case`.

    image: float32 ``[C, X', Y', Z']``; label: integer ``[X', Y', Z']`` or None; record: how to invert.
    """

    image: np.ndarray
    label: np.ndarray | None
    record: PreprocessRecord


def preprocess_case(image: Volume, plan: Plan | None = None, label: Volume | None = None) -> PreprocessedCase:
    """Run ``image`` (and its ``label`` map on the same grid) through ``plan`` (default: the paper's).

    Returns a :class:`PreprocessedCase` with ``image`` float32 ``[C, X', Y', Z']`` in ``plan.orientation``
    at about ``plan.spacing`` mm, intensity-normalised and cropped; ``label`` integer ``[X', Y', Z']``.
    Raises :class:`InputError` for NaN/inf voxels, a label that is not a non-negative integer map, or
    a label whose grid differs from the image's.
    """
    plan = plan or Plan()
    name = image.path or "image"
    if image.array.ndim not in (3, 4):
        raise InputError(f"{name}: image must be [X, Y, Z] or [C, X, Y, Z], got shape {image.array.shape}")
    bad = count_nonfinite(image.array)
    if bad:
        raise InputError(f"{name}: {bad} non-finite voxels (NaN or inf)")
    if label is not None:
        label = as_label(label)
        check_same_grid(image, label)

    shape0 = image.shape
    ornt = geo.orientation_transform(image.affine, plan.orientation)
    affine1 = geo.ornt_affine(image.affine, ornt, shape0)
    shape1 = geo.ornt_shape(shape0, ornt)
    arr = image.array if image.array.ndim == 4 else image.array[None]
    arr1 = geo.apply_ornt(arr, ornt)  # view
    shape2 = geo.target_shape(shape1, spacing_of(affine1), plan.spacing)
    # the resampled float32 image, before it is allocated (an extreme spacing of the scan or the plan)
    check_volume_bytes(
        (arr.shape[0], *shape2),
        4,
        name,
        f"resampling to {'x'.join(f'{v:g}' for v in plan.spacing)} mm gives",
    )
    if max(shape2) < MIN_RESAMPLED_VOXELS:  # a spacing in the wrong unit (1500 meant 1.5 mm)
        old = "x".join(f"{v:g}" for v in spacing_of(affine1))
        raise InputError(
            f"{name}: resampling its {'x'.join(map(str, shape1))} voxels of {old} mm to "
            f"{'x'.join(f'{v:g}' for v in plan.spacing)} mm leaves {'x'.join(map(str, shape2))} voxels; "
            "--spacing is in millimetres"
        )
    affine2 = geo.resample_affine(affine1, shape1, shape2)

    img = geo.resample_linear(arr1, shape2)  # float32 [C, *shape2]
    lab = None
    if label is not None:
        lab = geo.resample_nearest(geo.apply_ornt(label.array, ornt), shape2)

    stats: list[tuple[float, float]] = []
    raw_nonzero = (img != 0).any(axis=0) if plan.modality == "mri" else None  # MRI background is 0
    if plan.modality == "ct":
        low = float(img.min()) if img.size else 0.0
        if low > NOT_CT_ABOVE:  # never air: an MR scan (or a PET, a mask) taken for CT
            print(
                f"warning: {shown(name)}: no voxel below {NOT_CT_ABOVE:g} (air in CT is -1000 HU; its "
                f"lowest is {low:g}): windowed as CT; an MR scan needs --modality mri (z-score)",
                file=sys.stderr,
            )
        img = ct_window(img, plan.window, inplace=True)
        fg = (img > 0).any(axis=0)
    else:
        img, stats = zscore(img, inplace=True)
        fg = raw_nonzero
    if plan.crop_to_foreground:
        if lab is not None:
            fg |= lab > 0
        start, stop = geo.foreground_box(fg)
    else:
        start, stop = (0, 0, 0), shape2
    del fg
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    if tuple(stop) != tuple(shape2) or any(start):
        img = np.ascontiguousarray(img[(slice(None), *box)])
        lab = np.ascontiguousarray(lab[box]) if lab is not None else None
    affine3 = geo.crop_affine(affine2, start)

    record = PreprocessRecord(
        source=str(image.path) if image.path is not None else None,
        original_shape=shape0,
        original_affine=np.asarray(image.affine).tolist(),
        original_orientation="".join(image.orientation),
        ornt=[(int(a), int(b)) for a, b in ornt],
        reoriented_shape=shape1,
        resampled_shape=shape2,
        crop_start=start,
        crop_stop=stop,
        affine=affine3.tolist(),
        spacing=spacing_of(affine3),
        channels=int(arr.shape[0]),
        intensity=stats,
        obliquity_deg=geo.obliquity_deg(image.affine),
    )
    return PreprocessedCase(image=img, label=lab, record=record)


def _uncrop(array: np.ndarray, record: PreprocessRecord, fill: float) -> np.ndarray:
    lead = array.shape[:-3]
    if tuple(array.shape[-3:]) != record.shape:
        raise InputError(
            f"prediction shape {tuple(array.shape[-3:])} does not match the preprocessed "
            f"shape {record.shape} of {record.source or 'the case'}"
        )
    full = np.full((*lead, *record.resampled_shape), fill, dtype=array.dtype)
    box = tuple(slice(a, b) for a, b in zip(record.crop_start, record.crop_stop, strict=True))
    full[(..., *box)] = array
    return full


def restore_label(pred: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Label map ``[X', Y', Z']`` in preprocessed space -> ``[X, Y, Z]`` on the original grid (nearest).

    Voxels outside the foreground crop become 0 (background). The result, saved with
    ``save_volume(path, out, like=original_volume)``, lands on the input's grid and affine.
    """
    pred = np.asarray(pred)
    if pred.dtype.kind not in "biu":
        raise InputError(f"restore_label needs an integer label map, got {pred.dtype} (use restore_array)")
    if pred.ndim != 3:
        raise InputError(f"restore_label needs a [X, Y, Z] label map, got shape {pred.shape}")
    return restore_array(pred, record, order=0, fill=0)


def restore_array(
    array: np.ndarray, record: PreprocessRecord, order: int = 0, fill: float = 0.0
) -> np.ndarray:
    """Any map in preprocessed space (``[..., X', Y', Z']``) -> the original grid.

    ``order`` 0 = nearest (dtype kept), 1 = linear (float32; e.g. probabilities). ``fill`` is the value
    outside the foreground crop.
    """
    full = _uncrop(np.asarray(array), record, fill)
    if order == 0:
        back = geo.resample_nearest(full, record.reoriented_shape)
    elif order == 1:
        back = geo.resample_linear(full, record.reoriented_shape)
    else:
        raise ValueError(f"order must be 0 or 1, got {order}")
    out = geo.apply_ornt(back, geo.invert_ornt(np.asarray(record.ornt)))
    return np.ascontiguousarray(out)


def preprocessed_volume(case: PreprocessedCase, channel: int = 0) -> Volume:
    """A :class:`Volume` of one channel of the preprocessed image on its own (preprocessed) affine."""
    return Volume(array=case.image[channel], affine=np.asarray(case.record.affine))
