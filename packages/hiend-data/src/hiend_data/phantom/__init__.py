"""Synthetic CT phantoms in nnU-Net v2 layout: data for demos and tests when a user has none yet.

Each case is an adult torso drawn in millimetres (:mod:`.anatomy`): a body with its own size and
habitus (skin, subcutaneous fat, abdominal wall and back muscles, visceral fat), the liver, spleen,
kidneys in their perirenal fat (cortex, medulla, sinus fat, pelvis), stomach and bowel with gas and
fluid, the vertebral column (bodies, discs, posterior elements, canal and cord), ribs and costal
cartilage, aorta, IVC and portal vein, pancreas, psoas, lungs with vessels, the heart, the pelvic
bones and bladder, and the scanner's table. A scan of that body is drawn separately
(:mod:`.render`): coverage (abdomen, thorax-abdomen, abdomen-pelvis), a square field of view that may
crop the body, voxel size (``resolution="coarse"``: 2.5-4 mm in-plane, 2.5-5 mm slices;
``"clinical"``: 0.6-0.98 mm in-plane, 0.625-5 mm slices) and axis orientation. An organ outside the
scan, or cut by its edge, is absent or partial in the label map, as in a real scan. Intensities are
HU per tissue for the contrast phase (:mod:`.tissues`: native, arterial, portal), with partial volume
across the slice thickness and in-plane correlated noise drawn per case (6-22 HU).

Images are int16 HU, labels uint8; deterministic for a seed. Labels: 0 background, 1 liver, 2 spleen,
3 kidney_right, 4 kidney_left, 5 spine (the vertebrae: bodies and posterior elements), 6 lungs.
Everything else drawn is background.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_text
from ..errors import InputError
from ..io import Volume, save_volume
from .anatomy import Body, draw_body
from .render import COVERAGES, RESOLUTIONS, Scan, draw_scan, render
from .tissues import LABELS, PHASES

__all__ = [
    "COVERAGES",
    "LABELS",
    "ORIENTATIONS",
    "PHASES",
    "RESOLUTIONS",
    "Phantom",
    "make_phantom",
    "make_phantom_dataset",
]

ORIENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("R", "A", "S"),
    ("L", "P", "S"),
    ("L", "A", "S"),
    ("R", "P", "I"),
    ("P", "L", "S"),
    ("L", "P", "I"),
)


@dataclass
class Phantom:
    """One synthetic case. hu: int16 ``[X, Y, Z]``; label: uint8 ``[X, Y, Z]``; affine: (4, 4) voxel ->
    world RAS mm; orientation: axis codes of ``hu``'s array axes; tissue: uint8 ``[X, Y, Z]`` tissue
    ids (:data:`.tissues.TISSUES`); body and scan: what was drawn."""

    hu: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    orientation: tuple[str, str, str]
    tissue: np.ndarray | None = None
    body: Body | None = None
    scan: Scan | None = None


def make_phantom(
    rng: np.random.Generator,
    spacing: tuple[float, float, float] | None = None,
    orientation: tuple[str, str, str] | None = None,
    resolution: str = "coarse",
    coverage: str | None = None,
    phase: str = "native",
    shape: tuple[int, int, int] | None = None,
) -> Phantom:
    """One phantom: a body, then a scan of it. ``spacing`` (mm along R, A, S) overrides ``resolution``'s
    draw; ``coverage`` one of :data:`COVERAGES` (drawn when None); ``phase`` one of :data:`PHASES`
    or ``"random"`` (drawn per case). ``shape`` (voxels along R, A, S; needs ``spacing``) fixes the
    grid, centred on the drawn field of view (benchmarks that need a given size). The array is
    reoriented to ``orientation`` (drawn when None)."""
    from nibabel import orientations as nio

    if phase == "random":
        phase = PHASES[int(rng.integers(len(PHASES)))]
    if phase not in PHASES:
        raise InputError(f"phase must be one of {', '.join(PHASES)} or random, got {phase!r}")
    if resolution not in RESOLUTIONS:
        raise InputError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if coverage is not None and coverage not in COVERAGES:
        raise InputError(f"coverage must be one of {', '.join(COVERAGES)}, got {coverage!r}")
    if spacing is not None and (len(spacing) != 3 or not all(0.3 <= float(s) <= 10 for s in spacing)):
        raise InputError(f"spacing must be three values in 0.3..10 mm, got {spacing}")
    if shape is not None and (spacing is None or len(shape) != 3 or min(shape) < 8):
        raise InputError(f"shape {shape} needs spacing and three sizes >= 8")
    body = draw_body(rng)
    scan = draw_scan(body, rng, resolution=resolution, spacing=spacing, coverage=coverage, phase=phase)
    if shape is not None:
        zc = sum(scan.z_range) / 2
        half = shape[2] * scan.spacing[2] / 2
        scan.z_range = (zc - half, zc + half)
        scan.size = tuple(int(n) for n in shape)  # type: ignore[assignment]
    if orientation is None:
        orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    hu, label, tissue, affine = render(body, scan, rng)
    ornt = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), nio.axcodes2ornt(orientation))
    hu_o = np.ascontiguousarray(nio.apply_orientation(hu, ornt))
    label_o = np.ascontiguousarray(nio.apply_orientation(label, ornt))
    tissue_o = np.ascontiguousarray(nio.apply_orientation(tissue, ornt))
    affine_o = affine @ nio.inv_ornt_aff(ornt, hu.shape)
    return Phantom(hu_o, label_o, affine_o, tuple(orientation), tissue_o, body, scan)  # type: ignore[arg-type]


def make_phantom_dataset(
    out: str | os.PathLike[str],
    cases: int = 8,
    seed: int = 0,
    test_cases: int = 0,
    overwrite: bool = False,
    resolution: str = "coarse",
    phase: str = "native",
    coverage: str | None = None,
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
    if phase not in (*PHASES, "random"):
        raise InputError(f"phase must be one of {', '.join(PHASES)} or random, got {phase!r}")
    if resolution not in RESOLUTIONS:
        raise InputError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if coverage is not None and coverage not in COVERAGES:
        raise InputError(f"coverage must be one of {', '.join(COVERAGES)}, got {coverage!r}")
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
        ph = make_phantom(rng, resolution=resolution, coverage=coverage, phase=phase)
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
