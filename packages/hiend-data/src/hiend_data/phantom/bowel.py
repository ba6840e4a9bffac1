"""The bowel: the colon's frame (caecum to sigmoid, stool and gas) and small-bowel loops.

:func:`_draw_bowel` paints into the visceral fat only, after the solid organs and before the pelvis
(:func:`.anatomy.draw_anatomy`); a leaner patient gets more small-bowel loops.
"""

from __future__ import annotations

import numpy as np

from .body import Body
from .canvas import Canvas, Capsule
from .tissues import TISSUES as T


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
