"""Synthetic CT phantoms in nnU-Net v2 layout: data for demos and tests when a user has none yet.

Each case is a torso: air outside (-1000 HU), a body outline with a subcutaneous fat layer (-100 HU) around
soft tissue (40 HU), lungs (-850 HU) at the top, liver (60 HU) on the patient's right, spleen (50 HU) on
the left, two kidneys (30 HU) at the back and the spine (700 HU) behind the midline, with Gaussian noise
(about 12 HU after a light partial-volume blur). Geometry is drawn per case: 64..112 voxels per axis,
0.8..3 mm spacing per axis, and one of several orientations (RAS, LPS, LAS, RPI, PLS, ...). The anatomy
is laid out in world (RAS) coordinates relative to the field of view, so the liver is on the patient's
right in every orientation. Images are int16 HU, labels uint8; deterministic for a seed.

Labels: 0 background, 1 liver, 2 spleen, 3 kidney_right, 4 kidney_left, 5 spine, 6 lungs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_text
from .errors import InputError
from .io import Volume, save_volume

LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "spine": 5,
    "lungs": 6,
}
#: Mean HU of each labelled structure (before noise).
ORGAN_HU: dict[int, float] = {1: 60.0, 2: 50.0, 3: 30.0, 4: 30.0, 5: 700.0, 6: -850.0}
AIR_HU, FAT_HU, SOFT_HU = -1000.0, -100.0, 40.0
NOISE_HU = 12.0
ORIENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("R", "A", "S"),
    ("L", "P", "S"),
    ("L", "A", "S"),
    ("R", "P", "I"),
    ("P", "L", "S"),
    ("L", "P", "I"),
)
SIZE_RANGE = (64, 112)
SPACING_RANGE = (0.8, 3.0)


@dataclass
class Phantom:
    """One synthetic case. hu: int16 ``[X, Y, Z]``; label: uint8 ``[X, Y, Z]``; affine: (4, 4) voxel ->
    world RAS mm; orientation: axis codes of ``hu``'s array axes."""

    hu: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    orientation: tuple[str, str, str]


def _ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (z - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    orientation: tuple[str, str, str] | None = None,
) -> Phantom:
    """One phantom; ``shape`` and ``spacing`` are given along L->R, P->A, I->S (RAS array axes) before
    the array is reoriented to ``orientation``. Unset ones are drawn from ``rng``."""
    from nibabel import orientations as nio
    from scipy.ndimage import gaussian_filter

    if shape is None:
        shape = tuple(int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=3))
    if spacing is None:
        spacing = tuple(round(float(v), 3) for v in rng.uniform(*SPACING_RANGE, size=3))
    if orientation is None:
        orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    # Normalised RAS+ coordinates in (-1, 1) across the field of view: +x is the patient's right (nibabel's
    # RAS+: x grows towards R), +y anterior, +z superior. So the liver sits at x > 0, the spleen at x < 0.
    x, y, z = (((np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]

    def jitter(v: tuple[float, float, float], s: float) -> np.ndarray:
        return np.asarray(v, dtype=np.float32) + rng.uniform(-s, s, size=3).astype(np.float32)

    def scale(v: tuple[float, float, float]) -> np.ndarray:
        return np.asarray(v, dtype=np.float32) * rng.uniform(0.85, 1.15, size=3).astype(np.float32)

    hu = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    rx, ry = rng.uniform(0.82, 0.95), rng.uniform(0.62, 0.75)
    body = ((x / rx) ** 2 + (y / ry) ** 2 <= 1.0) & np.ones_like(z, dtype=bool)
    inner = (x / (rx - 0.07)) ** 2 + (y / (ry - 0.07)) ** 2 <= 1.0
    hu[body] = FAT_HU
    hu[body & inner] = SOFT_HU
    organs = [
        (
            6,
            _ellipsoid(x, y, z, jitter((-0.42, 0.0, 0.7), 0.03), scale((0.3, 0.42, 0.4)))
            | _ellipsoid(x, y, z, jitter((0.42, 0.0, 0.7), 0.03), scale((0.3, 0.42, 0.4))),
        ),
        (1, _ellipsoid(x, y, z, jitter((0.38, 0.08, 0.1), 0.04), scale((0.34, 0.36, 0.3)))),
        (2, _ellipsoid(x, y, z, jitter((-0.5, -0.15, 0.12), 0.03), scale((0.14, 0.2, 0.2)))),
        (3, _ellipsoid(x, y, z, jitter((0.3, -0.35, -0.3), 0.03), scale((0.11, 0.12, 0.22)))),
        (4, _ellipsoid(x, y, z, jitter((-0.3, -0.35, -0.28), 0.03), scale((0.11, 0.12, 0.22)))),
        (5, ((x / 0.1) ** 2 + ((y + 0.52) / 0.1) ** 2 <= 1.0) & np.ones_like(z, dtype=bool)),
    ]
    for value, mask in organs:
        mask = mask & inner
        hu[mask] = ORGAN_HU[value] + float(rng.uniform(-5, 5))
        label[mask] = value
    hu += rng.normal(0.0, NOISE_HU * 1.6, size=shape).astype(np.float32)
    hu = gaussian_filter(hu, sigma=0.5, mode="nearest")  # partial volume; also brings noise to ~NOISE_HU
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = -0.5 * (np.asarray(shape) - 1) * np.asarray(spacing)  # centre of the FOV at the origin
    ornt = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), nio.axcodes2ornt(orientation))
    hu_o = np.ascontiguousarray(nio.apply_orientation(hu, ornt))
    label_o = np.ascontiguousarray(nio.apply_orientation(label, ornt))
    affine_o = affine @ nio.inv_ornt_aff(ornt, shape)
    return Phantom(hu_o, label_o, affine_o, tuple(orientation))  # type: ignore[arg-type]


def make_phantom_dataset(
    out: str | os.PathLike[str], cases: int = 8, seed: int = 0, test_cases: int = 0, overwrite: bool = False
) -> Path:
    """Write an nnU-Net v2 raw dataset of ``cases`` labelled phantoms (+ ``test_cases`` held-out ones in
    ``imagesTs`` with their labels in ``labelsTs``) to the folder ``out`` and return it.

    Layout: ``dataset.json`` (channel_names, labels, numTraining, file_ending), ``imagesTr/{case}_0000.nii.gz``,
    ``labelsTr/{case}.nii.gz``, ``imagesTs/{case}_0000.nii.gz``, ``labelsTs/{case}.nii.gz`` (the common
    nnU-Net extension for scoring held-out cases; discovery never trains on either). Case ``i`` depends
    only on (seed, i).
    ``out`` must be absent or empty unless ``overwrite`` (which first removes earlier ``phantom_*``
    cases from the three image/label folders, nothing else). Every file is written atomically
    (:mod:`hiend_data.atomic`: whole or not at all; a failure leaves no temporary file and an earlier
    ``dataset.json`` as it was).
    """
    out = Path(out)
    if cases < 1 or test_cases < 0:
        raise InputError(f"cases must be >= 1 and test_cases >= 0, got cases={cases} test_cases={test_cases}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(
            f"{out}: folder is not empty (choose an empty folder, or overwrite=True / --overwrite)"
        )
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for old in (out / sub).glob("phantom_*.nii.gz") if overwrite else ():
            old.unlink()  # a previous phantom dataset's cases, so the folder matches dataset.json
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(int(seed))
    for i in range(cases + test_cases):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(root.entropy, spawn_key=(i,))))
        ph = make_phantom(rng)
        like = Volume(array=ph.hu, affine=ph.affine)
        name = f"phantom_{i:03d}"
        images, labels = ("imagesTr", "labelsTr") if i < cases else ("imagesTs", "labelsTs")
        save_volume(out / images / f"{name}_0000.nii.gz", ph.hu, like=like)
        save_volume(out / labels / f"{name}.nii.gz", ph.label, like=like)
    meta = {
        "name": "hiend-phantom",
        "description": f"synthetic CT phantoms (hiend_data.phantom, seed {seed})",
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out
