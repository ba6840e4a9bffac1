"""From a body to a scan: field of view, coverage, voxel size, orientation, partial volume and CT noise.

The scan is drawn separately from the body (:func:`draw_scan`): which part of the trunk it covers, how
wide its square reconstruction field of view is (it may crop the body at the sides, as clinical
abdominal scans often do), its voxel size and its axis orientation. :func:`render` then samples the
tissue map, averages ``sub`` samples across each slice's thickness (partial volume along z follows the
slice thickness), blurs in-plane by the reconstruction kernel's point spread, and adds CT noise that is
correlated in-plane (filtered white noise) at a level drawn per case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Body, _profile, draw_anatomy
from .canvas import Canvas
from .tissues import TEXTURE, TISSUE_LABEL, TISSUES, hu_table

COVERAGES = ("abdomen", "thorax-abdomen", "abdomen-pelvis")
#: in-plane and slice spacing ranges (mm) of the two resolution presets
RESOLUTIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "coarse": ((2.5, 4.0), (2.5, 5.0)),
    "clinical": ((0.6, 0.98), (0.625, 5.0)),
}


@dataclass
class Scan:
    """Where and how a body is scanned (mm; RAS+ world). ``spacing`` is (x, y, z); slices are axial,
    their thickness equals the z spacing."""

    coverage: str
    z_range: tuple[float, float]
    fov: float
    centre: tuple[float, float]
    spacing: tuple[float, float, float]
    noise: float  # HU, sd of the noise in a uniform region
    phase: str
    size: tuple[int, int, int] | None = None  # a fixed grid (voxels), else from fov and z_range

    def shape(self) -> tuple[int, int, int]:
        if self.size is not None:
            return self.size
        n = max(16, round(self.fov / self.spacing[0]))
        m = max(16, round(self.fov / self.spacing[1]))
        k = max(8, round((self.z_range[1] - self.z_range[0]) / self.spacing[2]))
        return n, m, k


def draw_scan(
    body: Body,
    rng: np.random.Generator,
    resolution: str = "coarse",
    spacing: tuple[float, float, float] | None = None,
    coverage: str | None = None,
    phase: str = "native",
) -> Scan:
    """Draw a scan of ``body``: coverage (abdomen 50 %, thorax-abdomen 25 %, abdomen-pelvis 25 %),
    square field of view (body width -40 .. +100 mm, within 300-500 mm), spacing from ``resolution``
    (or ``spacing`` as given), noise sd 6-22 HU."""
    if coverage is None:
        coverage = COVERAGES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    if coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {', '.join(COVERAGES)}, got {coverage!r}")
    lev = body.levels
    dome = -body.breath
    top = dome + rng.uniform(15, 50) if coverage != "thorax-abdomen" else lev["T1"][0] + rng.uniform(0, 30)
    if coverage == "abdomen-pelvis":
        bottom = lev["L5"][0] - rng.uniform(140, 180)
    else:
        bottom = lev["L5"][0] - rng.uniform(0, 40)
    zz = np.linspace(bottom, top, 16)
    hw, ant, back = _profile(body, zz)
    fov = float(np.clip(2 * hw.max() + rng.uniform(-40, 100), 300, 500))
    yc = float(((ant - back) / 2).mean())
    if spacing is None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        (a, b), (c, d) = RESOLUTIONS[resolution]
        inplane = round(float(rng.uniform(a, b)), 3)
        spacing = (inplane, inplane, round(float(rng.uniform(c, d)), 3))
    return Scan(
        coverage=coverage,
        z_range=(float(bottom), float(top)),
        fov=fov,
        centre=(float(rng.normal(0, 8)), yc + float(rng.normal(0, 10))),
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        noise=float(rng.uniform(6, 22)),
        phase=phase,
    )


def ct_noise(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], sd: float, rng: np.random.Generator
) -> np.ndarray:
    """CT-like noise, float32 ``shape``: white noise low-passed in-plane (a reconstruction kernel's
    noise is correlated over ~1 mm within a slice, independent between slices), scaled to ``sd`` HU."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal(shape, dtype=np.float32)
    corr = [max(0.6, 0.7 / spacing[0]), max(0.6, 0.7 / spacing[1]), 0.0]
    noise = gaussian_filter(noise, corr, mode="wrap")
    noise *= sd / max(float(noise.std()), 1e-6)
    return noise


def render(
    body: Body, scan: Scan, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``body`` on ``scan``'s grid: (hu int16 ``[X, Y, Z]``, label uint8 ``[X, Y, Z]``, tissue ids
    uint8 ``[X, Y, Z]`` (:data:`.tissues.TISSUES`, at each slice's centre), affine (4, 4) voxel -> world
    RAS mm), arrays in RAS order (x right, y anterior, z superior)."""
    from scipy.ndimage import gaussian_filter

    nx, ny, nz = scan.shape()
    sx, sy, sz = scan.spacing
    x0 = scan.centre[0] - (nx - 1) / 2 * sx
    y0 = scan.centre[1] - (ny - 1) / 2 * sy
    z0 = scan.z_range[0] + sz / 2
    sub = 1 if sz <= 1.5 else 3  # samples across a slice's thickness
    offsets = ((np.arange(sub) + 0.5) / sub - 0.5) * sz
    xs = x0 + np.arange(nx) * sx
    ys = y0 + np.arange(ny) * sy
    zs = (z0 + np.arange(nz)[:, None] * sz + offsets[None, :]).ravel()
    canvas = Canvas(xs, ys, zs, sub)
    draw_anatomy(canvas, body, rng)
    tissue = canvas.tissue

    hu_of = hu_table(scan.phase, rng)
    hu = hu_of[tissue]
    # the lungs: denser towards the back (dependent), a gravity gradient of ~100 HU
    lung = tissue == TISSUES["lung"]
    grad = (-(ys - ys.mean()) / max(float(np.ptp(ys)), 1.0) + 0.5).astype(np.float32)[None, :, None]
    hu += np.where(lung, 110.0 * np.clip(grad, 0, 1), 0.0).astype(np.float32)
    tex_w = TEXTURE[tissue]
    if sub > 1:
        hu = hu.reshape(nx, ny, nz, sub).mean(axis=-1)
        tex_w = tex_w.reshape(nx, ny, nz, sub).mean(axis=-1)
        centre = np.ascontiguousarray(tissue[:, :, sub // 2 :: sub])
    else:
        centre = tissue
    label = TISSUE_LABEL[centre]
    del tissue, canvas
    # texture: smooth in-organ variation (sigma ~4 mm), trabecular and lung structure ride on it
    tex = rng.standard_normal((nx, ny, nz), dtype=np.float32)
    sig = [max(0.5, 4.0 / s) for s in (sx, sy, sz)]
    tex = gaussian_filter(tex, sig, mode="nearest")
    tex /= max(float(tex.std()), 1e-6)
    hu += tex_w * tex
    # the reconstruction kernel's in-plane blur (~0.8 mm FWHM, at least half a voxel)
    hu = gaussian_filter(hu, [max(0.45, 0.35 / sx), max(0.45, 0.35 / sy), 0.0], mode="nearest")
    hu += ct_noise((nx, ny, nz), scan.spacing, scan.noise, rng)
    hu_i = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [x0, y0, z0]
    return hu_i, label, centre, affine
