"""A map of tissue ids on a scan's grid, and the shapes drawn into it, in world millimetres.

The :class:`Canvas` holds one tissue id per sample of an RAS-ordered grid (``[X, Y, Z]``, coordinates
increasing along each axis, world RAS+ millimetres: x grows towards the patient's right, y
anteriorly, z superiorly). Along z it may hold ``sub`` samples per slice
(the slice's sensitivity profile; :mod:`.render` averages them into one slice, which is the partial
volume of a thick slice).

Shapes are implicit: a function of broadcast coordinate arrays ``(x, y, z)`` (mm) returning a boolean
mask, evaluated only inside the shape's bounding box, so a small structure costs a small box. Smooth
random deformations (:class:`Warp`) displace the coordinates before a template is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Mask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Warp:
    """A smooth random displacement field: a sum of a few sinusoids per axis.

    ``amplitude`` mm (peak per mode), ``wavelength`` mm (shortest); ``modes`` per axis.
    """

    freqs: np.ndarray  # (3, modes, 3) angular frequency vectors, rad / mm
    phases: np.ndarray  # (3, modes)
    amps: np.ndarray  # (3, modes) mm

    @classmethod
    def draw(cls, rng: np.random.Generator, amplitude: float, wavelength: float, modes: int = 3) -> Warp:
        dirs = rng.normal(size=(3, modes, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        lengths = rng.uniform(wavelength, 2.5 * wavelength, size=(3, modes, 1))
        amps = amplitude * rng.uniform(0.4, 1.0, size=(3, modes)) / np.sqrt(modes)
        return cls(2 * np.pi * dirs / lengths, rng.uniform(0, 2 * np.pi, size=(3, modes)), amps)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        out = []
        for axis, base in enumerate((x, y, z)):
            d = 0.0
            for m in range(self.phases.shape[1]):
                f = self.freqs[axis, m]
                d = d + self.amps[axis, m] * np.sin(f[0] * x + f[1] * y + f[2] * z + self.phases[axis, m])
            out.append(base + d)
        return tuple(out)


def rotation(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation matrix (3, 3) from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([rx, ry, rz])
    mx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    my = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    mz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return mz @ my @ mx


@dataclass
class Ellipsoid:
    """Points with ``|R^T (p' - centre) / radii| <= 1``, ``p'`` the warped point. mm."""

    centre: np.ndarray
    radii: np.ndarray
    rot: np.ndarray | None = None
    warp: Warp | None = None

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, dtype=np.float64)
        self.radii = np.asarray(self.radii, dtype=np.float64)

    def scaled(self, by: float | Iterable[float], warp: bool = True) -> Ellipsoid:
        """The same ellipsoid with radii times ``by`` (an inner or outer layer), same warp and rotation."""
        return Ellipsoid(self.centre, self.radii * np.asarray(by), self.rot, self.warp if warp else None)

    def grown(self, mm: float) -> Ellipsoid:
        return Ellipsoid(self.centre, np.maximum(self.radii + mm, 0.5), self.rot, self.warp)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radii if self.rot is None else np.abs(self.rot) @ self.radii
        pad = 0.0 if self.warp is None else float(np.abs(self.warp.amps).sum(axis=1).max())
        return self.centre - r - pad, self.centre + r + pad

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        if self.warp is not None:
            x, y, z = self.warp(x, y, z)
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        if self.rot is not None:
            r = self.rot  # local = R^T d
            dx, dy, dz = (
                r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
            )
        return (dx / self.radii[0]) ** 2 + (dy / self.radii[1]) ** 2 + (dz / self.radii[2]) ** 2 <= 1.0


@dataclass
class Capsule:
    """Points within ``radius`` mm of the segment ``a``-``b`` (a vessel, a bowel segment, a rib piece)."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=np.float64)
        self.b = np.asarray(self.b, dtype=np.float64)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.a, self.b) - self.radius, np.maximum(self.a, self.b) + self.radius

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        ab = self.b - self.a
        den = float(ab @ ab) or 1.0
        dx, dy, dz = x - self.a[0], y - self.a[1], z - self.a[2]
        t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / den, 0.0, 1.0)
        ex, ey, ez = dx - t * ab[0], dy - t * ab[1], dz - t * ab[2]
        return ex * ex + ey * ey + ez * ez <= self.radius**2


class Canvas:
    """Tissue ids on an RAS grid. ``xs, ys, zs``: sample coordinates (mm, increasing); ``sub`` samples
    per slice along z. ``tissue``: uint8 ``[len(xs), len(ys), len(zs)]``."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, sub: int = 1) -> None:
        self.xs, self.ys, self.zs = (np.asarray(v, dtype=np.float32) for v in (xs, ys, zs))
        self.sub = sub
        self.tissue = np.zeros((len(xs), len(ys), len(zs)), dtype=np.uint8)

    def window(self, lo: Iterable[float], hi: Iterable[float]) -> tuple[slice, slice, slice] | None:
        """Index slices of the samples inside the box ``[lo, hi]`` (mm); None when it misses the grid."""
        out = []
        for coords, a, b in zip((self.xs, self.ys, self.zs), lo, hi, strict=True):
            i0, i1 = int(np.searchsorted(coords, a, "left")), int(np.searchsorted(coords, b, "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, win: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            self.xs[win[0]][:, None, None],
            self.ys[win[1]][None, :, None],
            self.zs[win[2]][None, None, :],
        )

    def paint(
        self,
        tissue: int,
        shape: Mask,
        bbox: tuple[np.ndarray, np.ndarray] | None = None,
        only: Iterable[int] | None = None,
        keep: Iterable[int] | None = None,
        extra: Mask | None = None,
    ) -> None:
        """Set ``tissue`` where ``shape`` (and ``extra``) hold, inside ``bbox`` (default: the shape's own).

        ``only``: overwrite only these tissue ids; ``keep``: never overwrite these.
        """
        lo, hi = bbox if bbox is not None else shape.bbox()  # type: ignore[attr-defined]
        win = self.window(lo, hi)
        if win is None:
            return
        x, y, z = self.coords(win)
        mask = shape(x, y, z)
        if extra is not None:
            mask = mask & extra(x, y, z)
        mask = np.broadcast_to(mask, tuple(s.stop - s.start for s in win))
        sub = self.tissue[win]
        if only is not None:
            mask = mask & np.isin(sub, np.fromiter(only, dtype=np.uint8))
        if keep is not None:
            mask = mask & ~np.isin(sub, np.fromiter(keep, dtype=np.uint8))
        sub[mask] = tissue
