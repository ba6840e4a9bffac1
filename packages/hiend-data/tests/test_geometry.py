"""Reorientation, resampling and cropping: every voxel keeps its world position."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from hiend_data import geometry as geo

CODES = ["RAS", "LPS", "LAS", "PIR", "ASL", "IRP", "SLA"]


def _affine(codes: str, spacing=(1.0, 2.0, 3.0), origin=(-10.0, 5.0, 20.0)) -> np.ndarray:
    """Axis-aligned affine whose array axes point to ``codes`` with the given spacing."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    aff = np.eye(4)
    aff[:3, :3] = 0
    for i, (axis, flip) in enumerate(ornt):
        aff[int(axis), i] = flip * spacing[i]
    aff[:3, 3] = origin
    return aff


def _world(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates ``[3, *shape]`` of every voxel centre."""
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, *shape)


def _field(world: np.ndarray) -> np.ndarray:
    """A value that identifies a world position (exact in float64 on integer-ish grids)."""
    return world[0] * 1e6 + world[1] * 1e3 + world[2]


@pytest.mark.parametrize("codes", CODES)
@pytest.mark.parametrize("target", ["RAS", "LPS"])
def test_reorient_keeps_world_positions(codes, target):
    shape = (4, 5, 6)
    aff = _affine(codes)
    arr = _field(_world(aff, shape))
    ornt = geo.orientation_transform(aff, target)
    out = geo.apply_ornt(arr, ornt)
    aff2 = geo.ornt_affine(aff, ornt, shape)
    assert nib.aff2axcodes(aff2) == tuple(target)
    assert out.shape == geo.ornt_shape(shape, ornt)
    np.testing.assert_allclose(out, _field(_world(aff2, out.shape)), rtol=0, atol=1e-6)
    back = geo.apply_ornt(out, geo.invert_ornt(ornt))
    np.testing.assert_array_equal(back, arr)


def test_apply_ornt_leaves_channels_alone():
    arr = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    ornt = geo.orientation_transform(_affine("PIR"), "RAS")
    out = geo.apply_ornt(arr, ornt)
    for c in range(2):
        np.testing.assert_array_equal(out[c], geo.apply_ornt(arr[c], ornt))


@pytest.mark.parametrize(("n", "factor"), [(7, 2), (5, 3), (30, 2), (1, 4)])
def test_nearest_integer_upsample_then_downsample_is_identity(n, factor):
    up = geo.nearest_indices(n, n * factor)
    down = geo.nearest_indices(n * factor, n)
    np.testing.assert_array_equal(np.repeat(np.arange(n), factor), up)  # each voxel duplicated
    np.testing.assert_array_equal(up[down], np.arange(n))


def test_resample_nearest_label_round_trip():
    lab = np.random.default_rng(0).integers(0, 5, size=(6, 7, 3)).astype(np.uint8)
    up = geo.resample_nearest(lab, (12, 14, 6))
    assert up.dtype == np.uint8
    np.testing.assert_array_equal(up[::2, ::2, ::2], lab)
    np.testing.assert_array_equal(geo.resample_nearest(up, lab.shape), lab)


def test_resample_linear_matches_the_resampled_affine():
    """A world-linear ramp resampled linearly equals the ramp evaluated on the new grid's affine."""
    shape, aff = (20, 16, 12), _affine("LPS", spacing=(0.8, 1.1, 2.5))
    ramp = lambda w: 0.3 * w[0] - 0.2 * w[1] + 0.1 * w[2]  # noqa: E731
    arr = ramp(_world(aff, shape)).astype(np.float32)
    new_shape = geo.target_shape(shape, (0.8, 1.1, 2.5), (1.5, 1.5, 1.5))
    assert new_shape == (11, 12, 20)
    out = geo.resample_linear(arr, new_shape)
    expect = ramp(_world(geo.resample_affine(aff, shape, new_shape), new_shape))
    inner = (slice(1, -1),) * 3  # beyond the outermost centres the edge value repeats
    np.testing.assert_allclose(out[inner], expect[inner], atol=1e-4)
    assert out.dtype == np.float32


def test_resample_keeps_the_field_of_view():
    shape, aff = (10, 10, 10), _affine("RAS", spacing=(3.0, 3.0, 3.0))
    new = geo.resample_affine(aff, shape, (20, 20, 20))
    # the outer faces of the first and last voxels coincide
    np.testing.assert_allclose(new @ [-0.5, -0.5, -0.5, 1], aff @ [-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(new @ [19.5, 19.5, 19.5, 1], aff @ [9.5, 9.5, 9.5, 1])


def test_foreground_box_and_crop_affine():
    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 5, 3] = True
    start, stop = geo.foreground_box(mask)
    assert (start, stop) == ((1, 2, 3), (5, 6, 4))
    assert geo.foreground_box(np.zeros((2, 3, 4), bool)) == ((0, 0, 0), (2, 3, 4))
    aff = _affine("LPS")
    cropped = geo.crop_affine(aff, start)
    for i, j, k in itertools.product(range(2), repeat=3):
        np.testing.assert_allclose(cropped @ [i, j, k, 1], aff @ [i + 1, j + 2, k + 3, 1])


def test_obliquity_measured():
    theta = np.radians(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot * 2.0
    assert geo.obliquity_deg(aff) == pytest.approx(20.0)
    assert geo.obliquity_deg(_affine("PIR")) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("shape", "out"),
    [
        ((20, 17, 9), (40, 34, 18)),
        ((33, 20, 15), (11, 27, 7)),
        ((1, 5, 6), (3, 5, 2)),
        ((2, 9, 9), (1, 4, 20)),
    ],
)
def test_resample_linear_matches_scipy_zoom(shape, out):
    """The separable fast path gives scipy.ndimage.zoom's numbers (order 1, cell model, edges repeated)."""
    from scipy import ndimage

    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = ndimage.zoom(
        arr,
        [o / i for i, o in zip(shape, out, strict=True)],
        order=1,
        mode="nearest",
        grid_mode=True,
        prefilter=False,
    )
    np.testing.assert_allclose(geo.resample_linear(arr, out), ref, atol=1e-5)
    ints = (arr * 100).astype(np.int16)
    ref_i = ndimage.zoom(
        ints.astype(np.float32),
        [o / i for i, o in zip(shape, out, strict=True)],
        order=1,
        mode="nearest",
        grid_mode=True,
        prefilter=False,
    )
    np.testing.assert_allclose(geo.resample_linear(np.flip(ints, 1), out), np.flip(ref_i, 1), atol=1e-3)
