"""How CT-like a scan is, in numbers that a phantom and a real scan can both be measured by.

:func:`measure` takes an RAS-ordered HU volume, its spacing and named structure masks and returns:

* ``hu``: mean and sd of HU per structure;
* ``volume_ml``, ``extent_mm`` (x, y, z bounding box) and ``cut`` (touches the scan's first or last
  slice, so its volume is partial) per structure;
* ``body``: median width and depth (mm) of the body's axial outline (largest connected region above
  -400 HU, holes filled per slice; the scanner's table is a separate region);
* ``fractions``: of the body's voxels, air (< -200 HU), fat (-200..-30), soft tissue (-30..150) and
  bone (>= 150);
* ``fat_sd``: sd of HU in subcutaneous fat (6-15 mm under the skin, HU in -200..-40), the noise a
  reader sees.

:data:`RANGES` holds what a CT-like adult abdomen must show, each range with where it comes from (the
real labelled slab in ``../shared/data/ct``, measured with this module, and the literature cited in
:mod:`.anatomy` and :mod:`.tissues`); :func:`out_of_range` lists the measurements outside them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: quantity -> (lo, hi, source). Volumes only count for structures wholly inside the scan.
RANGES: dict[str, tuple[float, float, str]] = {
    "hu.liver": (35, 70, "real slab 45 (sd 15); Lamba 2014 unenhanced 55-60"),
    "hu.spleen": (25, 60, "real slab 33; Lamba 2014 45-50"),
    "hu.kidney_right": (0, 40, "real slab 11 (partial volume with sinus and perirenal fat); parenchyma ~30"),
    "hu.kidney_left": (0, 40, "real slab 15; parenchyma ~30"),
    "hu.spine": (130, 350, "real slab vertebrae 195 (sd 138), cortex and marrow mixed at 3 mm"),
    "hu.lungs": (-880, -650, "real slab lung bases -744 (sd 136); parenchyma -850 ventral"),
    "hu.aorta": (25, 60, "real slab 42 (unenhanced blood)"),
    "hu.paraspinal": (10, 55, "real slab autochthon 24 (fat-infiltrated muscle); muscle 45-50"),
    "sd.liver": (8, 35, "real slab 15 (noise + texture at 3 mm)"),
    "volume_ml.liver": (900, 2300, "ICRP 89: 1,400-1,800 g; Heinemann 1999 ~1,200-1,900 mL"),
    "volume_ml.spleen": (60, 450, "Prassopoulos 1997: ~100-350 mL; ICRP 89 130-150 g"),
    "volume_ml.kidney_right": (70, 250, "ICRP 89: 275-310 g the pair; real slab >= 107 mL (cut)"),
    "volume_ml.kidney_left": (70, 250, "ICRP 89; real slab >= 99 mL (cut)"),
    "extent_z.kidney_right": (70, 140, "Emamian 1993: length 10-12 cm, tilted from the body axis"),
    "extent_z.kidney_left": (70, 140, "Emamian 1993"),
    "body.width": (280, 480, "real 351-363 mm; adult abdomens ~300-450 mm"),
    "body.depth": (170, 340, "real 267-288 mm"),
    "fractions.fat": (
        0.2,
        0.65,
        "real slab 0.34, real thorax-abdomen-pelvis 0.45 (0.55 mid-abdomen); obese adults ~0.6 at L3",
    ),
    "fractions.bone": (0.01, 0.08, "real slab 0.021, thorax-abdomen-pelvis 0.041"),
    "fractions.air": (0.005, 0.15, "real 0.04-0.07 (bowel gas, lung bases); not for a whole chest"),
    "fat_sd": (8, 40, "real slab 20 HU (subcutaneous fat)"),
}


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The body: largest connected region above -400 HU, holes filled slice by slice (bool, like ``hu``)."""
    from scipy import ndimage as ndi

    m = hu > -400
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
    body = lab == (int(np.argmax(sizes)) + 1)
    for k in range(body.shape[2]):
        body[:, :, k] = ndi.binary_fill_holes(body[:, :, k])
    return body


def measure(
    hu: np.ndarray, spacing: tuple[float, float, float], structures: Mapping[str, np.ndarray]
) -> dict:
    """Statistics of an RAS-ordered HU volume ``[X, Y, Z]`` with ``spacing`` (mm) and named bool masks."""
    from scipy import ndimage as ndi

    hu = np.asarray(hu, dtype=np.float32)
    sp = np.asarray(spacing, dtype=np.float64)
    voxel_ml = float(np.prod(sp)) / 1000.0
    out: dict = {"hu": {}, "sd": {}, "volume_ml": {}, "extent_mm": {}, "cut": {}}
    for name, mask in structures.items():
        if not mask.any():
            continue
        vals = hu[mask]
        idx = np.argwhere(mask)
        lo, hi = idx.min(0), idx.max(0)
        out["hu"][name] = float(vals.mean())
        out["sd"][name] = float(vals.std())
        out["volume_ml"][name] = float(mask.sum() * voxel_ml)
        out["extent_mm"][name] = [float(v) for v in (hi - lo + 1) * sp]
        out["cut"][name] = bool(lo[2] == 0 or hi[2] == hu.shape[2] - 1)
    body = body_mask(hu)
    widths, depths = [], []
    for k in range(body.shape[2]):
        idx = np.argwhere(body[:, :, k])
        if len(idx) > 50:
            e = (idx.max(0) - idx.min(0) + 1) * sp[:2]
            widths.append(e[0])
            depths.append(e[1])
    out["body"] = {"width": float(np.median(widths)), "depth": float(np.median(depths))}
    b = hu[body]
    out["fractions"] = {
        "air": float((b < -200).mean()),
        "fat": float(((b >= -200) & (b < -30)).mean()),
        "soft": float(((b >= -30) & (b < 150)).mean()),
        "bone": float((b >= 150).mean()),
    }
    depth = np.zeros(body.shape, dtype=np.float32)
    for k in range(body.shape[2]):  # in-plane depth under the skin
        depth[:, :, k] = ndi.distance_transform_edt(body[:, :, k], sampling=sp[:2])
    sub = (depth > 6) & (depth < 15) & (hu > -200) & (hu < -40)
    for mask in structures.values():
        sub &= ~mask
    out["fat_sd"] = float(hu[sub].std()) if sub.any() else float("nan")
    return out


def flat(stats: Mapping) -> dict[str, float]:
    """``{"hu.liver": 45.2, "volume_ml.liver": ..., "extent_z.kidney_left": ..., "body.width": ...}``;
    volumes and extents of structures cut by the scan's edge are left out."""
    out: dict[str, float] = {}
    for group in ("hu", "sd", "body", "fractions"):
        for k, v in stats[group].items():
            out[f"{group}.{k}"] = v
    for k, v in stats["volume_ml"].items():
        if not stats["cut"][k]:
            out[f"volume_ml.{k}"] = v
            out[f"extent_z.{k}"] = stats["extent_mm"][k][2]
    out["fat_sd"] = stats["fat_sd"]
    return out


#: quantities that a scan covering the whole chest changes (the lungs' air), checked only without it
CHEST_SENSITIVE = ("fractions.air", "fractions.fat")


def out_of_range(stats: Mapping, coverage: str | None = None) -> list[str]:
    """Measurements of ``stats`` (from :func:`measure`) outside :data:`RANGES`, one line each.
    ``coverage="thorax-abdomen"`` skips :data:`CHEST_SENSITIVE` (the real references are abdomens)."""
    bad = []
    for key, value in flat(stats).items():
        if coverage == "thorax-abdomen" and key in CHEST_SENSITIVE:
            continue
        if key in RANGES:
            lo, hi, source = RANGES[key]
            if not lo <= value <= hi:
                bad.append(f"{key} = {value:.3g} outside [{lo}, {hi}] ({source})")
    return bad


def phantom_structures(label: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Named masks of a phantom: its six labels plus the aorta and paraspinal muscles (tissue ids)."""
    from .tissues import LABELS, TISSUES

    out = {name: label == v for name, v in LABELS.items() if v}
    out["aorta"] = tissue == TISSUES["aorta"]
    out["paraspinal"] = tissue == TISSUES["paraspinal"]
    return out


def totalseg_structures(label: np.ndarray, names: Mapping[int | str, str]) -> dict[str, np.ndarray]:
    """The same named masks from a TotalSegmentator map: folded labels, ``aorta``, ``autochthon_*``."""
    from .tissues import LABELS
    from .totalseg import fold_totalsegmentator

    folded = fold_totalsegmentator(label, names)
    out = {name: folded == v for name, v in LABELS.items() if v}
    by_name = {v: int(k) for k, v in names.items()}
    out["aorta"] = label == by_name.get("aorta", -1)
    out["paraspinal"] = np.isin(
        label, [by_name.get("autochthon_left", -1), by_name.get("autochthon_right", -1)]
    )
    return out
