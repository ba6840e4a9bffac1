"""The body in millimetres: sizes drawn per case, its outline along z, the spine's line, the diaphragm.

One :class:`Body` per case (:func:`draw_body`): habitus, abdominal and chest size, fat and muscle
thickness, breathing, stature, organ scales and offsets, and the height and size of each vertebra from
T1 to L5 (``_VERTEBRAE``). From it, in the world frame of :mod:`.anatomy`: the outline at each height
(:func:`_profile`), the depth below the skin (:func:`body_depth_map`), the vertebral bodies' centre line
(:func:`spine_y`) and the diaphragm's two domes (:func:`diaphragm_z`, and the masks above and below
it). Nothing here paints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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


def _above_diaphragm(b: Body):
    return lambda x, y, z: z > diaphragm_z(b, x, y)


def _below_diaphragm(b: Body, gap: float):
    return lambda x, y, z: z < diaphragm_z(b, x, y) - gap


def _everywhere() -> tuple[np.ndarray, np.ndarray]:
    """A box (low corner, high corner, mm) holding the whole world: paint a mask wherever it is true."""
    big = np.array([1e4, 1e4, 1e4])
    return -big, big
