"""Surfaces: the mask minus its 6-connected erosion, the array's outside counting as background."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import hiend_eval.metrics
import hiend_eval.registry
import hiend_eval.surfaces
from hiend_eval.surfaces import surface


@pytest.mark.parametrize("shape", [(7, 9, 5), (1, 8, 8), (6, 1, 1), (1, 1, 1), (12, 3, 20)])
def test_surface_is_mask_minus_six_connected_erosion(shape):
    rng = np.random.default_rng(sum(shape))
    mask = ndimage.binary_closing(rng.random(shape) < 0.6) if min(shape) > 2 else rng.random(shape) < 0.6
    expected = mask & ~ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0
    )
    np.testing.assert_array_equal(surface(mask), expected)


def test_full_array_mask_has_only_its_border_as_surface():
    mask = np.ones((4, 5, 6), bool)
    s = surface(mask)
    assert s.sum() == 4 * 5 * 6 - 2 * 3 * 4 and not s[1:-1, 1:-1, 1:-1].any()


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("surface", hiend_eval.surfaces),
        ("surface_distances", hiend_eval.surfaces),
        ("surface_distances_of_surfaces", hiend_eval.surfaces),
        ("bounding_box", hiend_eval.surfaces),
        ("diagonal_mm", hiend_eval.surfaces),
        ("REGISTRY", hiend_eval.registry),
        ("Metric", hiend_eval.registry),
        ("PairStats", hiend_eval.registry),
        ("Scores", hiend_eval.registry),
        ("register", hiend_eval.registry),
        ("empty_flag", hiend_eval.registry),
        ("FLAG_MISSED", hiend_eval.registry),
        ("EMPTY_DIAGONAL", hiend_eval.registry),
    ],
)
def test_moved_names_keep_their_old_path_in_metrics(name, home):
    assert getattr(hiend_eval.metrics, name) is getattr(home, name)
