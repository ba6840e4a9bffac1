"""The organs: lungs, heart and lung vessels; liver, spleen, stomach, kidneys; great vessels, portal
vein and pancreas; bladder.

Each painter takes the canvas, the :class:`~.body.Body` (sizes, organ scales and offsets, breathing:
the upper abdominal organs move along z with ``-Body.breath``, the kidneys by 60 %) and the case's
random generator, and paints over the tissues it names only (``only=``), so the order in
:func:`.anatomy.draw_anatomy` is part of the result. Vessel trees: :func:`_tree`.
"""

from __future__ import annotations

import numpy as np

from .body import Body, _above_diaphragm, _below_diaphragm, _everywhere, _profile
from .canvas import Canvas, Capsule, Ellipsoid, Warp, rotation
from .tissues import TISSUES as T


def _tree(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    length: float,
    depth: int,
    out: list[Capsule],
) -> None:
    """A random branching vessel tree of capsules, radius shrinking by branch."""
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    out.append(Capsule(start, end, radius))
    if depth <= 0 or radius < 1.2:
        return
    for _ in range(2):
        turn = rng.normal(0, 0.55, size=3)
        _tree(rng, end, direction + turn, radius * 0.72, length * 0.8, depth - 1, out)


def _draw_thorax(cv: Canvas, b: Body, rng: np.random.Generator, above: np.ndarray) -> None:
    """Lungs in the cavity above the diaphragm (``above``: its height over each (x, y)) except the
    mediastinum, the heart on the left dome, and a vessel tree from each hilum."""
    lo_all, hi_all = _everywhere()
    br = -b.breath  # organs move down on inspiration
    zt = cv.zs
    if zt.max() > above.min():
        hw, _, _ = _profile(b, zt)
        med_w = 0.17 * hw[None, None, :] + 10

        win = cv.window(lo_all, hi_all)
        if win is not None:
            xx, yy, zz = cv.coords(win)
            med = med_w + 30 * np.clip((yy - 20) / 80, 0, 1)  # the heart widens it in front
            mask = (zz > above) & ((np.abs(xx + 8) > med) | ((yy < -22) & (np.abs(xx) > 30)))
            sub = cv.tissue
            sub[mask & (sub == T["visceral_fat"])] = T["lung"]
    # heart on the left dome, in the mediastinum and displacing the lung
    hs = b.organ_shift["heart"]
    heart = Ellipsoid(
        [-25 + hs[0], 0.30 * b.chest_depth + hs[1], 60 + br + hs[2]],
        [62, 48, 55],
        rotation(rz=30, ry=-20),
        Warp.draw(rng, 5, 60),
    )
    above_fn = _above_diaphragm(b)
    cv.paint(T["myocardium"], heart, only=[T["lung"], T["visceral_fat"]], extra=above_fn)
    cv.paint(T["heart_blood"], heart.grown(-9), only=[T["myocardium"]])
    # lung vessels: trees from each hilum
    for side in (1, -1):
        caps: list[Capsule] = []
        hilum = np.array([side * 45, 25, 75 + br])
        for _ in range(6):
            d = np.array([side * 1.0, 0, 0]) + rng.normal(0, 0.7, size=3)
            _tree(rng, hilum, d, 5.0, 40, 3, caps)
        for c in caps:
            cv.paint(T["lung_vessel"], c, only=[T["lung"]])


def _draw_liver(cv: Canvas, b: Body, rng: np.random.Generator) -> None:
    """The liver under the right dome (right and left lobes), its vessel trees and the gallbladder."""
    br = -b.breath
    sl, sh = b.organ_scale["liver"], b.organ_shift["liver"]
    liver_warp = Warp.draw(rng, 9, 70)
    right = Ellipsoid(
        [70 + sh[0], 32 + sh[1], -62 + br + sh[2]], np.array([82, 78, 84]) * sl, None, liver_warp
    )
    left = Ellipsoid(
        [-15 + sh[0], 80 + sh[1], -45 + br + sh[2]], np.array([62, 38, 42]) * sl, rotation(rz=-15), liver_warp
    )
    below = _below_diaphragm(b, 2)
    cav = [T["visceral_fat"], T["muscle"]]
    cv.paint(T["liver"], right, only=cav, extra=below)
    cv.paint(T["liver"], left, only=cav, extra=below)
    vessels: list[Capsule] = []
    for _ in range(3):
        d = np.array([1.0, 0.4, 0.2]) + rng.normal(0, 0.6, size=3)
        _tree(rng, np.array([45 + sh[0], 40 + sh[1], -55 + br + sh[2]]), d, 5.0, 35, 2, vessels)
    for c in vessels:
        cv.paint(T["hepatic_vessel"], c, only=[T["liver"]])
    gb = Ellipsoid(
        [45 + sh[0], 85 + sh[1], -115 + br + sh[2]], [16, 16, 32], rotation(rx=-30), Warp.draw(rng, 3, 30)
    )
    cv.paint(T["gallbladder"], gb, only=[T["liver"], T["visceral_fat"]])


def _draw_spleen(cv: Canvas, b: Body, rng: np.random.Generator, hw_ab: float) -> None:
    """The spleen, posterolateral under the left dome, concave towards the viscera."""
    br = -b.breath
    below = _below_diaphragm(b, 2)
    cav = [T["visceral_fat"], T["muscle"]]
    ss, sh = b.organ_scale["spleen"], b.organ_shift["spleen"]
    sc = np.array([-(hw_ab - 38) + sh[0], 5 + sh[1], -65 + br + sh[2]])
    spleen = Ellipsoid(sc, np.array([30, 62, 60]) * ss, rotation(rz=35, rx=10), Warp.draw(rng, 5, 45))
    hollow = Ellipsoid(sc + np.array([38, 30, 0]), np.array([22, 40, 60]) * ss, rotation(rz=35))
    cv.paint(T["spleen"], spleen, only=cav, extra=lambda x, y, z: below(x, y, z) & ~hollow(x, y, z))


def _draw_stomach(cv: Canvas, b: Body, rng: np.random.Generator, hw_ab: float) -> None:
    """The stomach in the left upper quadrant, anterior; gas on top (anterior: the patient lies supine)."""
    br = -b.breath
    below = _below_diaphragm(b, 2)
    sh = b.organ_shift["stomach"]
    stomach = Ellipsoid(
        [-(0.35 * hw_ab) + sh[0], 70 + sh[1], -55 + br + sh[2]],
        np.array([48, 42, 62]) * rng.uniform(0.75, 1.2, size=3),
        rotation(ry=25, rz=-20),
        Warp.draw(rng, 6, 50),
    )
    cv.paint(T["bowel_wall"], stomach, only=[T["visceral_fat"]], extra=below)
    cv.paint(T["stomach_content"], stomach.grown(-4), only=[T["bowel_wall"]])
    gas_level = stomach.centre[1] + rng.uniform(0.1, 0.8) * stomach.radii[1]
    cv.paint(
        T["bowel_gas"], stomach.grown(-4), only=[T["stomach_content"]], extra=lambda x, y, z: y > gas_level
    )


def _draw_kidneys(cv: Canvas, b: Body, rng: np.random.Generator) -> None:
    """Kidneys in perirenal fat (cortex, medulla, sinus, pelvis), hilum anteromedial, upper pole medial
    and posterior, the left one higher."""
    br = -b.breath
    lev = b.levels
    gut = [T["bowel_wall"], T["stomach_content"], T["bowel_gas"], T["paraspinal"]]
    for side, name, zc, cortex, medulla, sinus, pelvis in (
        (1, "kidney_right", -112, "kidney_r_cortex", "kidney_r_medulla", "kidney_r_sinus", "kidney_r_pelvis"),
        (-1, "kidney_left", -97, "kidney_l_cortex", "kidney_l_medulla", "kidney_l_sinus", "kidney_l_pelvis"),
    ):
        ks, sh = b.organ_scale[name], b.organ_shift[name]
        c = np.array([side * (lev["L1"][2] + 50) + sh[0], 2 + sh[1], zc + 0.6 * br + sh[2]])
        rot = rotation(rx=-18, ry=side * 12, rz=side * 25)
        kw = Warp.draw(rng, 3, 40)
        kid = Ellipsoid(c, np.array([28, 21, 55]) * ks, rot, kw)
        peri = kid.grown(6 + 14 * b.habitus)
        cv.paint(
            T["perirenal_fat"], peri, only=[T["visceral_fat"], T["liver"], T["spleen"], T["muscle"]] + gut
        )
        cv.paint(T[cortex], kid, only=[T["perirenal_fat"]])
        cv.paint(T[medulla], kid.grown(-6), only=[T[cortex]])
        hil = rot @ np.array([-side * 1.0, 0.35, 0])  # medial and anterior in the kidney's frame
        s_c = c + hil / np.linalg.norm(hil) * 14 * ks[0]
        sin = Ellipsoid(s_c, np.array([11, 9, 24]) * ks, rot)
        cv.paint(T[sinus], sin, only=[T[cortex], T[medulla]])
        cv.paint(T[pelvis], Ellipsoid(s_c + hil * 4, [6, 5, 10], rot), only=[T[sinus], T[cortex], T[medulla]])


def _draw_vessels(cv: Canvas, b: Body, hw_ab: float) -> None:
    """Aorta (with the iliac arteries), IVC, portal vein and pancreas."""
    br = -b.breath
    lev = b.levels
    z_top = float(cv.zs.max()) + 10
    z_bif = lev["L4"][0]
    ao = [
        Capsule([-18, 8, z_top], [-18, 12, 20 + br], 12),
        Capsule([-18, 12, 20 + br], [-12, 22, -60], 11.5),
        Capsule([-12, 22, -60], [-6, 28, z_bif], 10.5),
    ]
    if z_top > 150:
        ao.append(Capsule([5, 75, 120], [5, 80, min(z_top, 260)], 15))  # ascending aorta
    for c in ao:
        cv.paint(T["aorta"], c, only=[T["visceral_fat"], T["lung"], T["muscle"], T["myocardium"]])
    for side in (1, -1):
        cv.paint(
            T["aorta"],
            Capsule([-6, 28, z_bif], [side * 55, 40, z_bif - 110], 7),
            only=[T["visceral_fat"], T["muscle"]],
        )
    ivc = [
        Capsule([22, 26, z_bif - 20], [26, 28, -70], 11),
        Capsule([26, 28, -70], [26, 38, 5 + br], 12),
    ]
    for c in ivc:
        cv.paint(T["ivc"], c, only=[T["visceral_fat"], T["liver"], T["muscle"], T["perirenal_fat"]])
    conf = np.array([12, 48, -95 + br])
    for c in (
        Capsule(conf, [50, 58, -65 + br], 7),
        Capsule([-(hw_ab - 70), 30, -80 + br], conf, 4.5),
    ):
        cv.paint(T["portal_vein"], c, only=[T["visceral_fat"], T["liver"]])
    panc = [
        Capsule([-(hw_ab - 60), 32, -78 + br], [-30, 45, -92 + br], 11),
        Capsule([-30, 45, -92 + br], [28, 48, -112 + br], 14),
    ]
    for c in panc:
        cv.paint(T["pancreas"], c, only=[T["visceral_fat"]])


def _draw_bladder(cv: Canvas, b: Body, rng: np.random.Generator) -> None:
    """The bladder low in the pelvis, its size drawn per case."""
    zs5 = b.levels["L5"][0]
    bladder = Ellipsoid(
        [0, 70, zs5 - 135], np.array([45, 38, 35]) * rng.uniform(0.6, 1.2), None, Warp.draw(rng, 3, 40)
    )
    cv.paint(
        T["bladder"], bladder, only=[T["visceral_fat"], T["bowel_fluid"], T["bowel_wall"], T["bowel_gas"]]
    )
