"""An adult torso in millimetres: one body per case, drawn independently of any scan grid.

World frame: RAS+ millimetres, x towards the patient's right, y anterior, z superior; x = 0 on the
midline, y = 0 at the centre of the vertebral bodies (the spine's curvature moves it by a few cm along
the body), z = 0 at the top of the right hemidiaphragm at rest. Breathing (``Body.breath``, mm) moves
the diaphragm and the upper abdominal organs along z together (the kidneys by 60 %).

Sizes are drawn per case from published adult ranges:

* body: abdominal width 300-450 mm and depth 190-320 mm with the habitus; subcutaneous fat 5-45 mm.
  CT body-size surveys (e.g. AAPM Report 204, "Size-specific dose estimates", 2011: adult abdominal
  effective diameters ~24-38 cm) and the real slab in ``../shared/data/ct`` (363 x 288 mm, fat ~30 %
  of the body).
* organs: ICRP Publication 89, "Basic anatomical and physiological data for use in radiological
  protection: reference values" (2002): liver 1,400-1,800 g, spleen 130-150 g, kidneys 275-310 g the
  pair; Prassopoulos et al., "Determination of normal splenic volume on CT", Eur Radiol 1997 (spleen
  ~100-350 mL, length ~11 cm); Emamian et al., "Kidney dimensions at sonography", AJR 1993 (length
  10-12 cm, width 5-6 cm, thickness ~4 cm); Heinemann et al., "Standard liver volume in the Caucasian
  population", Liver Transpl 1999 (~1,200-1,900 mL).
* spine: vertebral body heights and widths growing from T1 (~16 x 28 mm) to L5 (~27 x 50 mm), discs
  4-6 mm (thoracic) and 9-11 mm (lumbar): Zhou et al., "Geometrical dimensions of the lower lumbar
  vertebrae", Eur Spine J 2000, and Panjabi et al., "Thoracic human vertebrae: quantitative
  three-dimensional anatomy", Spine 1991.

Positions are anatomical relations (liver under the right dome, spleen posterolateral under the left,
kidneys in perirenal fat beside the psoas at T12-L3, the left one higher, aorta left-anterior of the
spine, IVC right, ...), each jittered per case; shapes are templates (ellipsoids, capsules, shells)
with smooth random deformations (:class:`~.canvas.Warp`). None of it is fitted to one patient.
**Where each part lives.** :mod:`.body` (the :class:`Body`, its outline, spine line and diaphragm),
:mod:`.skeleton` (spine, ribs, pelvis), :mod:`.organs` (thorax, abdominal organs, vessels, bladder),
:mod:`.bowel` (colon and small bowel); this module paints the body's layers, the back muscles, the
psoas and the table, and runs the painters in order (:func:`draw_anatomy`).
"""

from __future__ import annotations

import numpy as np

from .body import Body, _everywhere, _profile, body_depth_map, diaphragm_z, draw_body, spine_y
from .bowel import _draw_bowel
from .canvas import Canvas, Capsule
from .organs import (
    _draw_bladder,
    _draw_kidneys,
    _draw_liver,
    _draw_spleen,
    _draw_stomach,
    _draw_thorax,
    _draw_vessels,
)
from .skeleton import _draw_pelvis, _draw_ribs, _draw_spine
from .tissues import TISSUES as T

__all__ = ["Body", "_profile", "body_depth_map", "diaphragm_z", "draw_anatomy", "draw_body", "spine_y"]


def draw_anatomy(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Paint the whole torso into ``canvas`` (tissue ids of :mod:`.tissues`).

    Outside in, then top down: each painter paints only over the tissues it names, and the random
    draws are taken in this order, so the order is part of the result (one seed, one body).
    """
    cv, b = canvas, body
    x, y, z = cv.coords((slice(None), slice(None), slice(None)))
    _draw_layers(cv, b, x, y, z)
    _draw_thorax(cv, b, rng, diaphragm_z(b, x, y))  # (X, Y, 1)
    _draw_paraspinal(cv, b)
    _draw_spine(cv, b, rng)
    _draw_ribs(cv, b, rng)
    _draw_psoas(cv, b)
    hw_ab = b.width / 2 - b.fat - b.wall  # the abdominal cavity's half width
    _draw_liver(cv, b, rng)
    _draw_spleen(cv, b, rng, hw_ab)
    _draw_stomach(cv, b, rng, hw_ab)
    _draw_kidneys(cv, b, rng)
    _draw_vessels(cv, b, hw_ab)
    _draw_bowel(cv, b, rng, hw_ab)
    _draw_pelvis(cv, b, rng, hw_ab)
    _draw_bladder(cv, b, rng)
    _draw_table(cv, b, rng)


def _draw_layers(cv: Canvas, b: Body, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Skin, subcutaneous fat (thicker in front), the muscle wall and the cavity (visceral fat), by
    depth below the skin; everything outside is air. ``x, y, z``: the canvas's coordinates."""
    theta = np.arctan2(y - 0.0, x)  # anterior half has sin > 0
    fat_t = b.fat * (0.75 + 0.45 * np.clip(np.sin(theta), 0, None) - 0.2 * np.clip(-np.sin(theta), 0, None))
    t_muscle = (2 + fat_t).astype(np.float32)
    tissue = cv.tissue
    step = max(1, 4_000_000 // max(1, tissue.shape[0] * tissue.shape[1]))  # slabs of ~4 M samples
    for k in range(0, tissue.shape[2], step):
        depth = body_depth_map(b, x, y, z[:, :, k : k + step])
        sub = tissue[:, :, k : k + step]
        sub[...] = T["air"]
        sub[depth >= 0] = T["skin"]
        sub[depth >= 2] = T["fat"]
        sub[depth >= t_muscle] = T["muscle"]
        sub[depth >= t_muscle + b.wall] = T["visceral_fat"]
    del theta, fat_t, t_muscle


def _draw_paraspinal(cv: Canvas, b: Body) -> None:
    """The back muscles beside the spine, following its curve."""
    lo_all, hi_all = _everywhere()

    def paraspinal(x, y, z):
        ys = spine_y(b, z)
        return ((np.abs(x) - 42) / 40) ** 2 + ((y - ys + 55) / 36) ** 2 <= 1.0

    cv.paint(
        T["paraspinal"],
        paraspinal,
        (lo_all, hi_all),
        only=[T["visceral_fat"], T["muscle"], T["fat"], T["lung"]],
    )


def _draw_psoas(cv: Canvas, b: Body) -> None:
    """The psoas along the lumbar spine, widening downwards."""
    lev = b.levels
    z_l5 = lev["L5"][0]
    z_t12 = lev["T12"][0]
    for side in (1, -1):
        for k in range(6):
            za = z_t12 - k * (z_t12 - z_l5 + 60) / 6
            zb = za - (z_t12 - z_l5 + 60) / 6
            ra, rb = 8 + 3.5 * k, 8 + 3.5 * (k + 1)
            xa, xb = side * (lev["L1"][2] + ra * 0.8), side * (lev["L1"][2] + rb * 0.8 + 2 * k)
            cap = Capsule([xa, 8 + k * 2, za], [xb, 8 + (k + 1) * 2, zb], (ra + rb) / 2)
            cv.paint(T["muscle"], cap, only=[T["visceral_fat"]])


def _draw_table(cv: Canvas, b: Body, rng: np.random.Generator) -> None:
    """The scanner's table (and, in 80 % of cases, a pad) under the back."""
    lo_all, hi_all = _everywhere()
    y_back = -b.back
    if rng.uniform() < 0.8:
        cv.paint(
            T["pad"],
            lambda x, y, z: (y < y_back + 2) & (y > y_back - 25) & (np.abs(x) < 240),
            (lo_all, hi_all),
            only=[T["air"]],
        )
        cv.paint(
            T["table"],
            lambda x, y, z: (y < y_back - 25) & (y > y_back - 32) & (np.abs(x) < 230),
            (lo_all, hi_all),
            only=[T["air"]],
        )
