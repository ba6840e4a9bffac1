"""Augmentation: drawing probabilities, the view algebra against numpy/MONAI, intensity in place."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hiend_data.augment import (
    N_UNIFORMS,
    AugmentParams,
    apply_intensity,
    augment,
    draw_augment,
    inverse_view,
    params_from_uniforms,
    spatial_view,
    view_plan,
)
from hiend_data.sampling import SamplerConfig

FLIP_SETS = [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]


def _reverse_swap(x: np.ndarray, rev: frozenset[int], swap: bool, axes: tuple[int, int]) -> np.ndarray:
    v = x[(slice(None), *(slice(None, None, -1) if i in rev else slice(None) for i in range(3)))]
    if swap:
        perm = [0, 1, 2, 3]
        perm[axes[0] + 1], perm[axes[1] + 1] = perm[axes[1] + 1], perm[axes[0] + 1]
        v = v.transpose(perm)
    return v


def test_uniforms_fire_and_magnitudes() -> None:
    cfg = SamplerConfig.pretrain()
    none = params_from_uniforms(cfg, np.full(N_UNIFORMS, 0.99))
    assert none == AugmentParams((), 0, (0, 1), None, None) and none.identity
    u = np.array([0.0, 0.4, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0 - 1e-12])
    p = params_from_uniforms(cfg, u)
    assert p.flips == (0, 1)  # 0.6 >= 0.5: axis 2 not flipped
    assert p.rot_k == 1
    assert p.scale == pytest.approx(0.9)  # 1 + 0.1 * (2 * 0 - 1)
    assert p.shift == pytest.approx(0.1)
    assert params_from_uniforms(cfg, np.array([1, 1, 1, 0, 0.5, 1, 0, 1, 0])).rot_k == 2
    assert params_from_uniforms(cfg, np.array([1, 1, 1, 0, 0.999, 1, 0, 1, 0])).rot_k == 3


def test_draw_rates_match_the_recipe() -> None:
    cfg = SamplerConfig.pretrain()
    rng = np.random.default_rng(0)
    n = 20000
    draws = [draw_augment(cfg, rng) for _ in range(n)]
    tol = 4 * np.sqrt(0.25 / n)
    for ax in range(3):
        assert abs(np.mean([ax in d.flips for d in draws]) - 0.5) < tol
    assert abs(np.mean([d.rot_k > 0 for d in draws]) - 0.3) < tol
    ks = np.bincount([d.rot_k for d in draws if d.rot_k], minlength=4)[1:]
    assert abs(ks / ks.sum() - 1 / 3).max() < 0.03
    scales = np.array([d.scale for d in draws if d.scale is not None])
    shifts = np.array([d.shift for d in draws if d.shift is not None])
    assert abs(len(scales) / n - 0.1) < tol and abs(len(shifts) / n - 0.1) < tol
    assert scales.min() >= 0.9 and scales.max() <= 1.1 and abs(scales.mean() - 1) < 0.01
    assert shifts.min() >= -0.1 and shifts.max() <= 0.1


@pytest.mark.parametrize("axes", [(0, 1), (1, 2), (0, 2), (1, 0)])
def test_view_plan_equals_flip_then_rot90(axes: tuple[int, int]) -> None:
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    for flips in FLIP_SETS:
        for k in range(4):
            p = AugmentParams(flips, k, axes)
            ref = np.rot90(
                np.flip(x, [a + 1 for a in flips]) if flips else x, k, axes=(axes[0] + 1, axes[1] + 1)
            )
            np.testing.assert_array_equal(spatial_view(x, p, channel_first=True), ref)
            rev, swap = view_plan(p)
            np.testing.assert_array_equal(_reverse_swap(x, rev, swap, axes), ref)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_inverse_view_roundtrip(k: int) -> None:
    x = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    for flips in FLIP_SETS:
        p = AugmentParams(flips, k, (0, 1))
        out = np.zeros_like(x)
        inverse_view(out, p, channel_first=False)[...] = x
        np.testing.assert_array_equal(out, spatial_view(x, p, channel_first=False))


def test_matches_monai_flip_and_rotate90() -> None:
    from monai.transforms import Flip, Rotate90

    x = np.arange(3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 5)
    for ax in range(3):
        ours = spatial_view(x, AugmentParams((ax,)), channel_first=True)
        np.testing.assert_array_equal(ours, np.asarray(Flip(spatial_axis=ax)(x)))
    sq = np.arange(4 * 4 * 5, dtype=np.float32).reshape(1, 4, 4, 5)
    for k in (1, 2, 3):
        ours = spatial_view(sq, AugmentParams(rot_k=k, rot_axes=(0, 1)), channel_first=True)
        np.testing.assert_array_equal(ours, np.asarray(Rotate90(k=k, spatial_axes=(0, 1))(sq)))


def test_intensity_in_place_and_reference_augment() -> None:
    img = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    buf = img.copy()
    out = apply_intensity(buf, AugmentParams(scale=1.5, shift=-0.25))
    assert out is buf
    np.testing.assert_allclose(buf, img * 1.5 - 0.25, rtol=1e-6)
    label = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = AugmentParams((2,), 2, (0, 1), 2.0, None)
    a_img, a_lab = augment(img, label, p)
    assert a_img.flags.c_contiguous and a_img.dtype == np.float32
    np.testing.assert_array_equal(a_img, np.rot90(img[..., ::-1], 2, axes=(1, 2)) * 2)
    np.testing.assert_array_equal(a_lab, np.rot90(label[..., ::-1], 2, axes=(0, 1)))
