"""Tissues of the synthetic CT: their id, their HU in each contrast phase, and the label each one carries.

A phantom is first drawn as a map of tissue ids (:data:`TISSUES`), then each id becomes HU through
:func:`hu_table` for the case's phase, and a label through :data:`TISSUE_LABEL`. Several tissues share a
label (a kidney's cortex, medulla, sinus fat and pelvis are all ``kidney_*``, as in TotalSegmentator's
kidney masks, which take in the renal sinus) and most carry none (background).

HU values (mean; each case draws its own value in ``[lo, hi]``) per phase:

* ``native``: no contrast. Fat, water, muscle, liver, spleen, kidney and blood from Lamba et al.,
  "CT Hounsfield numbers of soft tissues on unenhanced abdominal CT scans", AJR 2014 (liver ~55-60,
  spleen ~45-50, kidney ~30, muscle ~45-50, fat ~ -100), widened to take in the real slab in
  ``../shared/data/ct`` (liver 45, spleen 33, paraspinal muscle 25, aorta 42; BENCHMARKS.md).
* ``arterial`` (late arterial, ~35 s) and ``portal`` (portal venous, ~70 s): Bae, "Intravenous contrast
  medium administration and scan timing at CT", Radiology 2010 (aortic peak 250-350 HU; hepatic
  enhancement of >= 50 HU in the portal phase; spleen heterogeneous in the arterial phase); kidneys from
  Yuh & Cohan, "Different phases of renal enhancement", AJR 1999 (corticomedullary phase: cortex
  ~150-200, medulla ~60-90; nephrographic: both ~120-160).
* bone: trabecular vertebral bone 150-250 HU in adults (falls with age), cortical bone 800-1,200 HU;
  the real slab's vertebrae average 195 (sd 138) at 3 mm, cortex and marrow mixed.
* lung parenchyma -880..-820 (ventral) with a dependent gradient, air -1,000.
"""

from __future__ import annotations

import numpy as np

#: label values of the phantoms (nnU-Net's dataset.json ``labels``)
LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "spine": 5,
    "lungs": 6,
}

PHASES = ("native", "arterial", "portal")

# (name, label, {phase: (lo, hi)}); one row per tissue id (its index). A phase missing -> native's range.
_ROWS: list[tuple[str, int, dict[str, tuple[float, float]]]] = [
    ("air", 0, {"native": (-1000, -1000)}),
    ("skin", 0, {"native": (30, 50), "arterial": (40, 60), "portal": (45, 65)}),
    ("fat", 0, {"native": (-115, -85)}),
    ("visceral_fat", 0, {"native": (-115, -85)}),
    ("perirenal_fat", 0, {"native": (-115, -85)}),
    ("muscle", 0, {"native": (35, 55), "arterial": (45, 60), "portal": (50, 70)}),
    ("paraspinal", 0, {"native": (20, 45), "arterial": (30, 50), "portal": (35, 60)}),
    ("liver", 1, {"native": (40, 65), "arterial": (65, 85), "portal": (100, 125)}),
    ("hepatic_vessel", 1, {"native": (30, 42), "arterial": (45, 70), "portal": (140, 180)}),
    ("spleen", 2, {"native": (36, 52), "arterial": (100, 140), "portal": (105, 125)}),
    ("kidney_r_cortex", 3, {"native": (25, 38), "arterial": (150, 200), "portal": (140, 180)}),
    ("kidney_r_medulla", 3, {"native": (22, 35), "arterial": (60, 90), "portal": (110, 150)}),
    ("kidney_r_sinus", 3, {"native": (-115, -85)}),
    ("kidney_r_pelvis", 3, {"native": (0, 15)}),
    ("kidney_l_cortex", 4, {"native": (25, 38), "arterial": (150, 200), "portal": (140, 180)}),
    ("kidney_l_medulla", 4, {"native": (22, 35), "arterial": (60, 90), "portal": (110, 150)}),
    ("kidney_l_sinus", 4, {"native": (-115, -85)}),
    ("kidney_l_pelvis", 4, {"native": (0, 15)}),
    ("vertebra_cortex", 5, {"native": (450, 750)}),
    ("vertebra_marrow", 5, {"native": (110, 210)}),
    ("vertebra_posterior", 5, {"native": (180, 320)}),
    ("disc", 0, {"native": (70, 110)}),
    ("canal", 0, {"native": (5, 20)}),
    ("cord", 0, {"native": (25, 40)}),
    ("rib", 0, {"native": (180, 350)}),
    ("cartilage", 0, {"native": (80, 130)}),
    ("pelvic_bone", 0, {"native": (250, 450)}),
    ("aorta", 0, {"native": (35, 50), "arterial": (220, 350), "portal": (140, 190)}),
    ("ivc", 0, {"native": (32, 48), "arterial": (60, 110), "portal": (120, 160)}),
    ("portal_vein", 0, {"native": (32, 48), "arterial": (70, 110), "portal": (150, 190)}),
    ("heart_blood", 0, {"native": (35, 50), "arterial": (200, 320), "portal": (130, 170)}),
    ("myocardium", 0, {"native": (40, 55), "arterial": (100, 140), "portal": (90, 120)}),
    ("lung", 6, {"native": (-880, -820)}),
    ("lung_vessel", 6, {"native": (30, 50), "arterial": (150, 300), "portal": (120, 170)}),
    ("bowel_wall", 0, {"native": (30, 50), "arterial": (70, 110), "portal": (70, 100)}),
    ("bowel_fluid", 0, {"native": (0, 25)}),
    ("bowel_gas", 0, {"native": (-1000, -980)}),
    ("stool", 0, {"native": (-350, -150)}),
    ("stomach_content", 0, {"native": (5, 45)}),
    ("gallbladder", 0, {"native": (0, 20)}),
    ("bladder", 0, {"native": (0, 15)}),
    ("pancreas", 0, {"native": (25, 45), "arterial": (90, 130), "portal": (80, 110)}),
    ("table", 0, {"native": (100, 300)}),
    ("pad", 0, {"native": (-900, -700)}),
]

TISSUES: dict[str, int] = {name: i for i, (name, _, _) in enumerate(_ROWS)}
#: tissue id -> label value (uint8 lookup table)
TISSUE_LABEL = np.array([label for _, label, _ in _ROWS], dtype=np.uint8)
#: how much of the case's low-frequency texture field each tissue shows (HU per unit of the field)
_TEXTURE = {
    "air": 0.0,
    "bowel_gas": 0.0,
    "pad": 0.0,
    "vertebra_marrow": 45.0,
    "rib": 40.0,
    "pelvic_bone": 60.0,
}
_TEXTURE.update({"lung": 30.0, "stool": 60.0, "vertebra_posterior": 60.0, "fat": 4.0, "visceral_fat": 4.0})
_TEXTURE.update({"liver": 3.0, "spleen": 3.0})
TEXTURE = np.array([_TEXTURE.get(n, 6.0) for n, _, _ in _ROWS], dtype=np.float32)


def hu_table(phase: str, rng: np.random.Generator) -> np.ndarray:
    """HU per tissue id for ``phase`` (one of :data:`PHASES`), each drawn uniformly in its range.

    Left and right kidney share their draws (one patient's kidneys enhance alike); so do fat and the
    renal sinus fat. Returns float32 ``[n_tissues]``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    draws = {}
    for name, _, ranges in _ROWS:
        lo, hi = ranges.get(phase, ranges["native"])
        draws[name] = float(rng.uniform(lo, hi))
    for part in ("cortex", "medulla", "sinus", "pelvis"):
        draws[f"kidney_l_{part}"] = draws[f"kidney_r_{part}"]
    for fat in ("visceral_fat", "perirenal_fat", "kidney_r_sinus", "kidney_l_sinus"):
        draws[fat] = draws["fat"]
    return np.array([draws[name] for name, _, _ in _ROWS], dtype=np.float32)
