"""The skeleton: vertebrae, discs and the canal with its cord; ribs, costal cartilage and sternum; pelvis.

Each painter takes the canvas, the :class:`~.body.Body` and the case's random generator and paints
bone (and the soft tissue bound to it: discs, cartilage, the cord, the gluteal and iliac muscles) over
the soft tissues it names, so it must run after the body's layers (:func:`.anatomy.draw_anatomy` sets
the order). Vertebral sizes: ``_VERTEBRAE`` in :mod:`.body`.
"""

from __future__ import annotations

import numpy as np

from .body import _VERTEBRAE, Body, _profile, spine_y
from .canvas import Canvas, Capsule, Ellipsoid, Warp, rotation
from .tissues import TISSUES as T


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


def _draw_pelvis(cv: Canvas, b: Body, rng: np.random.Generator, hw_ab: float) -> None:
    """Iliac wings and femoral heads, the gluteal muscles behind the wings and the iliacus inside
    them, the sacrum; ``hw_ab`` is the abdominal cavity's half width (mm)."""
    lev = b.levels
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
