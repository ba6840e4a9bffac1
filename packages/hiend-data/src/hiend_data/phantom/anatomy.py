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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .canvas import Canvas, Capsule, Ellipsoid, Warp, rotation
from .tissues import TISSUES as T

# vertebral levels top to bottom: (name, body height mm, disc height below mm, half width mm, half depth mm)
_VERTEBRAE = [
    ("T1", 15, 4, 14, 11),
    ("T2", 16, 4, 14, 11),
    ("T3", 16, 4, 14, 12),
    ("T4", 17, 4.5, 15, 12),
    ("T5", 18, 4.5, 15, 13),
    ("T6", 18, 5, 16, 13),
    ("T7", 19, 5, 16, 14),
    ("T8", 19, 5, 17, 14),
    ("T9", 20, 5.5, 18, 15),
    ("T10", 21, 6, 19, 15),
    ("T11", 22, 6.5, 20, 16),
    ("T12", 23, 8, 21, 16),
    ("L1", 25, 9, 22, 17),
    ("L2", 26, 10, 23, 17),
    ("L3", 27, 10, 24, 18),
    ("L4", 27, 10, 25, 18),
    ("L5", 26, 11, 25, 18),
]


@dataclass
class Body:
    """One patient: sizes in mm, drawn by :func:`draw_body`."""

    habitus: float  # 0 lean .. 1 obese
    width: float  # abdominal width (skin to skin, mm)
    depth: float  # abdominal depth (anterior-posterior, mm)
    chest_width: float
    chest_depth: float
    hip_width: float
    fat: float  # subcutaneous fat thickness (mm, flanks)
    wall: float  # abdominal wall muscle thickness (mm)
    back: float  # posterior skin to vertebral body centre (mm)
    breath: float  # mm, + = inspiration (diaphragm and organs move down)
    stature: float  # scale of craniocaudal distances (1 = reference adult)
    organ_scale: dict[str, np.ndarray] = field(default_factory=dict)
    organ_shift: dict[str, np.ndarray] = field(default_factory=dict)
    levels: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # z, h, rx, ry

    def level_z(self, name: str) -> float:
        return self.levels[name][0]


def draw_body(rng: np.random.Generator) -> Body:
    """Draw one adult body (sizes, habitus, organ sizes and offsets, breathing)."""
    h = float(rng.beta(2.0, 2.2))
    width = float(np.clip(300 + 130 * h + rng.normal(0, 15), 290, 470))
    depth = float(np.clip(218 + 110 * h + rng.normal(0, 12), 190, 345))
    fat = float(np.clip(5 + 28 * h + rng.normal(0, 4), 4, 45))
    body = Body(
        habitus=h,
        width=width,
        depth=depth,
        chest_width=width * float(rng.uniform(0.92, 1.05)) - 15 * h,
        chest_depth=depth * float(rng.uniform(0.82, 0.95)) + 10,
        hip_width=width * float(rng.uniform(1.0, 1.12)),
        fat=fat,
        wall=float(rng.uniform(8, 15)),
        back=float(78 + 0.8 * fat + rng.uniform(-5, 10)),
        breath=float(rng.uniform(-12, 18)),
        stature=float(rng.uniform(0.9, 1.1)),
    )
    for organ, sd in (("liver", 0.08), ("spleen", 0.12), ("kidney_right", 0.07), ("kidney_left", 0.07)):
        body.organ_scale[organ] = np.clip(1 + rng.normal(0, sd, size=3), 0.75, 1.3)
    for organ in ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "heart"):
        body.organ_shift[organ] = rng.normal(0, [7, 6, 8])
    # vertebral column: T10's centre a few mm below the right dome, the rest stacked from it
    z = -5 + float(rng.normal(0, 12))
    zs: dict[str, float] = {}
    idx = [v[0] for v in _VERTEBRAE].index("T10")
    zs["T10"] = z
    s = body.stature
    for k in range(idx - 1, -1, -1):  # upwards
        name, hk, dk, *_ = _VERTEBRAE[k]
        _, hb, _, _, _ = _VERTEBRAE[k + 1]
        zs[name] = zs[_VERTEBRAE[k + 1][0]] + s * (hb / 2 + dk + hk / 2)
    for k in range(idx + 1, len(_VERTEBRAE)):  # downwards
        name, hk, _, _, _ = _VERTEBRAE[k]
        _, ha, da, _, _ = _VERTEBRAE[k - 1]
        zs[name] = zs[_VERTEBRAE[k - 1][0]] - s * (ha / 2 + da + hk / 2)
    grow = float(rng.uniform(0.92, 1.1))
    for name, hk, _, rx, ry in _VERTEBRAE:
        body.levels[name] = (zs[name], s * hk, grow * rx, grow * ry)
    return body


# ---------------------------------------------------------------- cross-section of the body along z


def _profile(body: Body, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half width, anterior extent and posterior extent (mm from the spine's y = 0) at heights ``z``."""
    s = body.stature
    zc = np.array([400, 250, 120, 0, -100, -200, -280, -360, -460]) * s
    half_w = (
        np.array(
            [
                0.85 * body.chest_width,
                0.98 * body.chest_width,
                body.chest_width,
                0.5 * (body.chest_width + body.width),
                body.width,
                body.width,
                body.hip_width * 0.98,
                body.hip_width,
                body.hip_width * 0.95,
            ]
        )
        / 2
    )
    depth = np.array(
        [
            0.8 * body.chest_depth,
            0.95 * body.chest_depth,
            body.chest_depth,
            0.5 * (body.chest_depth + body.depth),
            body.depth,
            body.depth * 0.98,
            body.depth * 0.92,
            body.depth * 0.88,
            body.depth * 0.85,
        ]
    )
    order = np.argsort(zc)
    hw = np.interp(z, zc[order], half_w[order])
    d = np.interp(z, zc[order], depth[order])
    back = np.full_like(hw, body.back)
    return hw, d - back, back


def spine_y(body: Body, z: np.ndarray) -> np.ndarray:
    """Anterior offset (mm) of the vertebral bodies' centre line: lumbar lordosis, thoracic kyphosis."""
    zl3 = body.level_z("L3")
    zt6 = body.level_z("T6")
    return 14 * np.exp(-(((z - zl3) / 90) ** 2)) - 12 * np.exp(-(((z - zt6) / 120) ** 2))


def body_depth_map(body: Body, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Depth below the skin (mm, negative outside), measured along the ray from the body's centre."""
    hw, ant, back = _profile(body, z)
    yc = (ant - back) / 2  # centre of the outline
    b = (ant + back) / 2
    dy = y - yc
    n = np.where(dy < 0, 3.2, 2.3)  # flat back on the table, rounder front
    u, v = np.abs(x) / hw, np.abs(dy) / b
    r = (u**n + v**n) ** (1.0 / n)
    rad = np.sqrt(x * x + dy * dy)
    return (1.0 - r) * rad / np.maximum(r, 1e-3)


def diaphragm_z(body: Body, x: np.ndarray, y: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """Height (mm) of the diaphragm above ``(x, y)``: two domes, deeper posteriorly (the recesses)."""
    hw = body.width / 2 - body.fat
    top_r, top_l = -body.breath + shift, -body.breath - 15 + shift
    yd = 0.30 * body.depth - 10
    ry = np.where(y > yd, 0.75 * body.depth, 0.42 * body.depth)
    dr = ((x - 0.42 * hw) / (0.62 * hw)) ** 2 + ((y - yd) / ry) ** 2
    dl = ((x + 0.42 * hw) / (0.62 * hw)) ** 2 + ((y - yd) / ry) ** 2
    return np.maximum(top_r - 75 * dr, top_l - 75 * dl)


# ---------------------------------------------------------------- drawing


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


def draw_anatomy(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Paint the whole torso into ``canvas`` (tissue ids of :mod:`.tissues`)."""
    cv = canvas
    big = np.array([1e4, 1e4, 1e4])
    lo_all, hi_all = -big, big
    b = body
    br = -b.breath  # organs move down on inspiration

    # ---- layers: skin, subcutaneous fat, muscle wall, cavity
    x, y, z = cv.coords((slice(None), slice(None), slice(None)))
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

    above = diaphragm_z(b, x, y)  # (X, Y, 1)
    lev = b.levels
    z_l5 = lev["L5"][0]

    # ---- thorax: lungs fill the cavity above the diaphragm, except the mediastinum
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

    # ---- back muscles and spine

    def paraspinal(x, y, z):
        ys = spine_y(b, z)
        return ((np.abs(x) - 42) / 40) ** 2 + ((y - ys + 55) / 36) ** 2 <= 1.0

    cv.paint(
        T["paraspinal"],
        paraspinal,
        (lo_all, hi_all),
        only=[T["visceral_fat"], T["muscle"], T["fat"], T["lung"]],
    )
    _draw_spine(cv, b, rng)
    _draw_ribs(cv, b, rng)

    # ---- psoas along the lumbar spine, widening downwards
    z_t12 = lev["T12"][0]
    for side in (1, -1):
        for k in range(6):
            za = z_t12 - k * (z_t12 - z_l5 + 60) / 6
            zb = za - (z_t12 - z_l5 + 60) / 6
            ra, rb = 8 + 3.5 * k, 8 + 3.5 * (k + 1)
            xa, xb = side * (lev["L1"][2] + ra * 0.8), side * (lev["L1"][2] + rb * 0.8 + 2 * k)
            cap = Capsule([xa, 8 + k * 2, za], [xb, 8 + (k + 1) * 2, zb], (ra + rb) / 2)
            cv.paint(T["muscle"], cap, only=[T["visceral_fat"]])

    # ---- liver under the right dome
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

    # ---- spleen: posterolateral under the left dome, concave towards the viscera
    ss, sh = b.organ_scale["spleen"], b.organ_shift["spleen"]
    hw_ab = b.width / 2 - b.fat - b.wall
    sc = np.array([-(hw_ab - 38) + sh[0], 5 + sh[1], -65 + br + sh[2]])
    spleen = Ellipsoid(sc, np.array([30, 62, 60]) * ss, rotation(rz=35, rx=10), Warp.draw(rng, 5, 45))
    hollow = Ellipsoid(sc + np.array([38, 30, 0]), np.array([22, 40, 60]) * ss, rotation(rz=35))
    cv.paint(T["spleen"], spleen, only=cav, extra=lambda x, y, z: below(x, y, z) & ~hollow(x, y, z))

    # ---- stomach: left upper quadrant, anterior; gas on top (anterior, the patient lies supine)
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

    gut = [T["bowel_wall"], T["stomach_content"], T["bowel_gas"], T["paraspinal"]]
    # ---- kidneys in perirenal fat, hilum anteromedial, upper pole medial and posterior
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

    # ---- great vessels, portal vein, pancreas
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

    # ---- bowel: the colon's frame and small-bowel loops in the visceral fat
    _draw_bowel(cv, b, rng, hw_ab)

    # ---- pelvis
    zs5 = lev["L5"][0]
    for side in (1, -1):
        wing = Ellipsoid(
            [side * (0.62 * hw_ab), 0, zs5 - 40], [9, 70, 60], rotation(rz=side * 40), Warp.draw(rng, 4, 50)
        )
        cv.paint(T["pelvic_bone"], wing, keep=[T["air"], T["skin"]])
        head = Ellipsoid([side * (0.55 * hw_ab), 45, zs5 - 150], [25, 25, 25])
        cv.paint(T["pelvic_bone"], head, keep=[T["air"], T["skin"]])
        # gluteal muscles behind the iliac wings, iliacus inside them
        glut = Ellipsoid(
            [side * 0.5 * hw_ab, -45, zs5 - 110],
            [0.32 * hw_ab, 48, 85],
            rotation(rz=side * 20),
            Warp.draw(rng, 6, 60),
        )
        cv.paint(T["muscle"], glut, only=[T["visceral_fat"], T["muscle"]])
        iliacus = Ellipsoid([side * 0.45 * hw_ab, 15, zs5 - 55], [30, 22, 50], rotation(rz=side * 40))
        cv.paint(T["muscle"], iliacus, only=[T["visceral_fat"]])
    sacrum = Ellipsoid([0, -25, zs5 - 70], [42, 18, 60], rotation(rx=-35))
    cv.paint(T["pelvic_bone"], sacrum, keep=[T["air"], T["skin"]])
    bladder = Ellipsoid(
        [0, 70, zs5 - 135], np.array([45, 38, 35]) * rng.uniform(0.6, 1.2), None, Warp.draw(rng, 3, 40)
    )
    cv.paint(
        T["bladder"], bladder, only=[T["visceral_fat"], T["bowel_fluid"], T["bowel_wall"], T["bowel_gas"]]
    )

    # ---- the scanner's table under the back
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


def _above_diaphragm(b: Body):
    return lambda x, y, z: z > diaphragm_z(b, x, y)


def _below_diaphragm(b: Body, gap: float):
    return lambda x, y, z: z < diaphragm_z(b, x, y) - gap


def _draw_spine(cv: Canvas, b: Body, rng: np.random.Generator) -> None:
    lev = b.levels
    names = [v[0] for v in _VERTEBRAE]
    zmin, zmax = float(cv.zs.min()) - 40, float(cv.zs.max()) + 40
    soft = [T["visceral_fat"], T["muscle"], T["paraspinal"], T["fat"], T["lung"], T["skin"]]
    for k, name in enumerate(names):
        zc, h, rx, ry = lev[name]
        if zc < zmin or zc > zmax:
            continue
        y0 = float(spine_y(b, np.array(zc)))
        cort = 1.2

        def vbody(x, y, z, zc=zc, h=h, rx=rx, ry=ry, y0=y0):
            return ((x / rx) ** 2 + ((y - y0) / ry) ** 2 <= 1.0) & (np.abs(z - zc) <= h / 2)

        def marrow(x, y, z, zc=zc, h=h, rx=rx, ry=ry, y0=y0, c=cort):
            return ((x / (rx - c)) ** 2 + ((y - y0) / (ry - c)) ** 2 <= 1.0) & (np.abs(z - zc) <= h / 2 - c)

        box = (np.array([-rx, y0 - ry, zc - h / 2]), np.array([rx, y0 + ry, zc + h / 2]))
        cv.paint(T["vertebra_cortex"], vbody, box)
        cv.paint(T["vertebra_marrow"], marrow, box)
        if k + 1 < len(names):  # the disc below
            _, dgap = _VERTEBRAE[k][1], _VERTEBRAE[k][2] * b.stature
            zd = zc - h / 2 - dgap / 2

            def disc(x, y, z, zd=zd, dg=dgap, rx=rx, ry=ry, y0=y0):
                return ((x / rx) ** 2 + ((y - y0) / ry) ** 2 <= 1.0) & (np.abs(z - zd) <= dg / 2)

            cv.paint(
                T["disc"],
                disc,
                (np.array([-rx, y0 - ry, zd - dgap]), np.array([rx, y0 + ry, zd + dgap])),
                only=soft,
            )
        # posterior elements: arch around the canal, spinous and transverse processes
        cy = y0 - ry - 9  # canal centre
        lumbar = name.startswith("L")

        def arch(x, y, z, zc=zc, h=h, cy=cy, ry=ry, y0=y0):
            e = (x / 19) ** 2 + ((y - cy) / 15) ** 2
            return (e <= 1.0) & (y < y0 - ry + 3) & (np.abs(z - zc + 0.15 * h) <= 0.42 * h)

        cv.paint(
            T["vertebra_posterior"],
            arch,
            (np.array([-20, cy - 16, zc - h]), np.array([20, y0, zc + h])),
            only=soft,
        )
        sp_len = 32 if lumbar else 36
        spin = Capsule(
            [0, cy - 12, zc - 0.2 * h], [0, cy - 12 - sp_len, zc - (0.25 if lumbar else 1.0) * h], 3.5
        )
        cv.paint(T["vertebra_posterior"], spin, only=soft)
        tp = 48 if lumbar else 38
        for side in (1, -1):
            cap = Capsule(
                [side * 14, cy + 3, zc - 0.1 * h],
                [side * tp, cy - (2 if lumbar else 12), zc - 0.1 * h],
                4 if lumbar else 4.5,
            )
            cv.paint(T["vertebra_posterior"], cap, only=soft)
    # the canal with its cord (to L1), continuous along the column
    zt, zb = lev["T1"][0] + 20, lev["L5"][0] - 20
    for zz in np.arange(zb, zt, 20.0):
        ya = float(spine_y(b, np.array(zz)))
        yb = float(spine_y(b, np.array(zz + 20)))
        ra = lev["L1"][3]
        cap_a = Capsule([0, ya - ra - 9, zz], [0, yb - ra - 9, zz + 20], 9)
        cv.paint(T["canal"], cap_a, only=soft + [T["disc"]])
        if zz > lev["L1"][0]:
            cv.paint(
                T["cord"], Capsule([0, ya - ra - 9, zz], [0, yb - ra - 9, zz + 20], 4.5), only=[T["canal"]]
            )


def _costal_band(side: int, yc: float, a_r: float, b_r: float):
    """Masks of a band along the inside of the body wall on one side (``side`` +1 right, -1 left): the
    ellipse of half axes ``a_r``, ``b_r`` (mm) centred at y = ``yc``, between angles ``lo`` and ``hi``
    (0 at the back, pi in front), within ``half_t`` mm of the ellipse and ``half_h`` mm of ``z_of(phi)``."""

    def band(lo: float, hi: float, half_t: float, half_h: float, z_of):
        def mask(x, y, z):
            phi = np.arctan2(side * x, -(y - yc))
            r = np.sqrt((x / a_r) ** 2 + ((y - yc) / b_r) ** 2)
            local = np.sqrt(x * x + (y - yc) ** 2) / np.maximum(r, 1e-3)
            return (
                (np.abs(r - 1) * local <= half_t)
                & (np.abs(z - z_of(phi)) <= half_h)
                & (phi >= lo)
                & (phi <= hi)
                & (side * x > 0)
            )

        return mask

    return band


def _draw_ribs(cv: Canvas, b: Body, rng: np.random.Generator) -> None:
    """Twelve ribs a side from the transverse processes around the inside of the body wall, falling
    anteriorly; 1-7 reach the sternum through cartilage, 8-10 join the costal margin, 11-12 float."""
    lev = b.levels
    zmin, zmax = float(cv.zs.min()), float(cv.zs.max())
    soft = [T["visceral_fat"], T["muscle"], T["fat"], T["lung"], T["paraspinal"], T["skin"]]
    for k in range(1, 13):
        zc = lev[f"T{k}"][0]
        drop = 95 * b.stature
        if zc < zmin - 10 or zc - drop > zmax + 10:
            continue
        hw, ant, back = _profile(b, np.array([zc - drop / 2]))
        inner = float(b.fat + 2 + 0.5 * b.wall)
        a_r = float(hw[0]) - inner
        yc = float((ant[0] - back[0]) / 2)
        b_r = float((ant[0] + back[0]) / 2) - inner
        end = {11: 1.9, 12: 1.35}.get(k, 2.45 if k >= 8 else 2.75)
        cart_end = 2.55 if k >= 8 and k <= 10 else (3.05 if k <= 7 else end)

        def rib_z(phi, zc=zc, drop=drop):  # falls by `drop` from the back (phi 0.35) to the front (pi)
            return zc - drop * np.clip((phi - 0.35) / (np.pi - 0.35), 0, 1) ** 1.3

        def cart_z(phi, end=end, rib_z=rib_z):  # the cartilage rises from the rib's end
            return rib_z(end) + 30 * (phi - end)

        for side in (1, -1):
            band = _costal_band(side, yc, a_r, b_r)
            box = (
                np.array([min(0, side * 400), -400, zc - drop - 10]),
                np.array([max(0, side * 400), 400, zc + 10]),
            )
            cv.paint(T["rib"], band(0.35, end, 3.5, 5.5, rib_z), box, only=soft)
            if cart_end > end:
                box = (
                    np.array([min(0, side * 400), -400, zc - drop - 20]),
                    np.array([max(0, side * 400), 400, zc + 60]),
                )
                cv.paint(T["cartilage"], band(end, cart_end, 4.0, 6.0, cart_z), box, only=soft)
    # sternum
    z_top = lev["T2"][0]
    z_bot = lev["T9"][0] - 25
    if z_bot < zmax and z_top > zmin:
        hw, ant, back = _profile(b, np.array([(z_top + z_bot) / 2]))
        ys = float(ant[0]) - b.fat - 14
        cv.paint(T["rib"], Capsule([0, ys, z_top], [0, ys + 5, z_bot], 9), only=soft)


def _draw_bowel(cv: Canvas, b: Body, rng: np.random.Generator, hw: float) -> None:
    lev = b.levels
    z_l4 = lev["L4"][0]
    ant = 0.55 * b.depth - b.back
    pts = np.array(
        [
            [0.62 * hw, 25, z_l4 - 20],  # caecum
            [0.66 * hw, 20, -140],  # hepatic flexure
            [0.35 * hw, 0.7 * ant, -150],
            [-0.10 * hw, 0.8 * ant, -175],  # transverse colon sags
            [-0.45 * hw, 0.6 * ant, -120],
            [-0.72 * hw, 15, -90],  # splenic flexure
            [-0.70 * hw, 10, z_l4],  # descending
            [-0.45 * hw, 40, z_l4 - 90],
            [-0.05 * hw, 30, z_l4 - 130],  # sigmoid
        ]
    )
    pts = pts + rng.normal(0, [8, 6, 10], size=pts.shape)
    only = [T["visceral_fat"]]
    for p, q in zip(pts[:-1], pts[1:], strict=True):
        r = float(rng.uniform(17, 27))
        cv.paint(T["bowel_wall"], Capsule(p, q, r), only=only)
        cv.paint(T["stool"], Capsule(p, q, r - 3), only=[T["bowel_wall"]])
        if rng.uniform() < 0.7:  # gas rises to the anterior side of the lumen
            lift = np.array([0, r * 0.45, 0])
            cv.paint(T["bowel_gas"], Capsule(p + lift, q + lift, r * 0.55), only=[T["stool"]])
    # small bowel: random walks in the central abdomen; a leaner patient has more loops, less fat
    loops = int(24 + 18 * (1 - b.habitus))
    for _ in range(loops):
        p = np.array(
            [rng.uniform(-0.7, 0.7) * hw, rng.uniform(-10, 0.85 * ant), rng.uniform(z_l4 - 150, -90)]
        )
        d = rng.normal(size=3)
        for _ in range(6):
            d = d / np.linalg.norm(d)
            q = p + d * rng.uniform(25, 45)
            r = float(rng.uniform(10, 16))
            cv.paint(T["bowel_wall"], Capsule(p, q, r), only=only)
            content = T["bowel_gas"] if rng.uniform() < 0.2 else T["bowel_fluid"]
            cv.paint(content, Capsule(p, q, r - 2.5), only=[T["bowel_wall"]])
            p, d = q, d + rng.normal(0, 0.9, size=3)
