"""Hand-computed cases for the metric functions (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hiend_eval import assd, diagonal_mm, dice, empty_flag, hd95, iou, nsd, score_masks, volume_ml
from hiend_eval.surfaces import surface_distances


def _line() -> tuple[np.ndarray, np.ndarray]:
    """Shape (1, 1, 10): every voxel is on the array border, so every voxel is surface."""
    pred = np.zeros((1, 1, 10), bool)
    ref = np.zeros((1, 1, 10), bool)
    pred[0, 0, 0:4] = True
    ref[0, 0, 2:6] = True
    return pred, ref


def test_line_hand_computed():
    pred, ref = _line()
    sp = (1.0, 1.0, 2.0)
    # pred voxels 0..3 to ref {2..5}: 2 voxels * 2 mm, 1 voxel * 2 mm, 0, 0 -> [4, 2, 0, 0]; ref symmetric.
    d_pred, d_ref = surface_distances(pred, ref, sp)
    assert sorted(d_pred) == [0, 0, 2, 4] and sorted(d_ref) == [0, 0, 2, 4]
    # 95th percentile of [0, 0, 2, 4] with linear interpolation: position 2.85 -> 2 + 0.85 * 2 = 3.7
    assert hd95(pred, ref, sp) == pytest.approx(3.7)
    assert assd(pred, ref, sp) == pytest.approx(12 / 8)
    assert nsd(pred, ref, sp, tolerance=2.0) == pytest.approx(6 / 8)  # 4 mm is the only distance > 2
    assert nsd(pred, ref, sp, tolerance=1.9) == pytest.approx(4 / 8)
    assert dice(pred, ref) == pytest.approx(2 * 2 / 8)
    assert iou(pred, ref) == pytest.approx(2 / 6)
    assert volume_ml(pred, sp) == pytest.approx(4 * 2 / 1000)


def _cubes() -> tuple[np.ndarray, np.ndarray]:
    """3x3x3 cubes in a 6^3 image, the reference shifted by one voxel along axis 0."""
    pred = np.zeros((6, 6, 6), bool)
    ref = np.zeros((6, 6, 6), bool)
    pred[1:4, 1:4, 1:4] = True
    ref[2:5, 1:4, 1:4] = True
    return pred, ref


def test_shifted_cubes_anisotropic_hand_computed():
    pred, ref = _cubes()
    sp = (2.0, 1.0, 1.0)
    # Each surface has 26 voxels (the centre is interior). Pred's x=1 face (9 voxels) is 2 mm (one
    # x-step) from ref's x=2 face; its x=2 and x=3 surface voxels lie on ref's surface (0), except pred's
    # (3,2,2), which is ref's interior centre: 1 mm to (3,1,2). Symmetric for ref.
    expected = sorted([0.0] * 16 + [1.0] + [2.0] * 9)
    d_pred, d_ref = surface_distances(pred, ref, sp)
    np.testing.assert_allclose(sorted(d_pred), expected)
    np.testing.assert_allclose(sorted(d_ref), expected)
    assert hd95(pred, ref, sp) == pytest.approx(2.0)  # position 23.75 of 26 sorted values: both 2
    assert assd(pred, ref, sp) == pytest.approx(2 * 19 / 52)
    assert nsd(pred, ref, sp, tolerance=1.5) == pytest.approx(34 / 52)
    assert nsd(pred, ref, sp, tolerance=2.0) == pytest.approx(1.0)  # exactly-2 mm distances count
    assert dice(pred, ref) == pytest.approx(2 * 18 / 54)
    assert iou(pred, ref) == pytest.approx(18 / 36)
    s = score_masks(pred, ref, sp, tolerance=1.5)
    assert (s.dice, s.hd95, s.nsd, s.flag) == (
        pytest.approx(2 / 3),
        pytest.approx(2.0),
        pytest.approx(34 / 52),
        None,
    )
    assert s.volume_pred_ml == s.volume_ref_ml == pytest.approx(27 * 2 / 1000)


def test_identical_masks_are_perfect():
    pred, _ = _cubes()
    s = score_masks(pred, pred.copy(), (0.7, 0.7, 2.5))
    assert (s.dice, s.iou, s.hd95, s.assd, s.nsd, s.flag) == (1.0, 1.0, 0.0, 0.0, 1.0, None)


def test_percentile_is_the_larger_direction():
    # pred = ref plus one far voxel: pred->ref has one large distance among few, ref->pred only zeros.
    ref = np.zeros((1, 1, 40), bool)
    ref[0, 0, :3] = True
    pred = ref.copy()
    pred[0, 0, 39] = True
    d_pred, d_ref = surface_distances(pred, ref, 1.0)
    assert sorted(d_pred) == [0, 0, 0, 37] and list(d_ref) == [0, 0, 0]
    assert hd95(pred, ref, 1.0) == pytest.approx(0.85 * 37)  # position 2.85 of [0, 0, 0, 37]
    assert hd95(ref, pred, 1.0) == pytest.approx(0.85 * 37)  # symmetric


def test_absent_from_both_is_nan():
    empty = np.zeros((6, 6, 6), bool)
    s = score_masks(empty, empty, (2.0, 1.0, 1.0))
    assert s.flag == "absent_both" and empty_flag(empty, empty) == "absent_both"
    for value in (s.dice, s.iou, s.hd95, s.assd, s.nsd):
        assert math.isnan(value)
    assert s.volume_pred_ml == s.volume_ref_ml == 0.0
    for f in (dice, iou):
        assert math.isnan(f(empty, empty))
    for f in (hd95, assd, nsd):
        assert math.isnan(f(empty, empty, 1.0))


@pytest.mark.parametrize("missing", ["pred", "ref"])
def test_present_in_one_only_scores_zero_and_the_diagonal(missing):
    full, _ = _cubes()
    empty = np.zeros_like(full)
    pred, ref = (empty, full) if missing == "pred" else (full, empty)
    sp = (2.0, 1.0, 1.0)
    diag = math.sqrt(12**2 + 6**2 + 6**2)  # norm of shape (6, 6, 6) x spacing (2, 1, 1)
    assert diagonal_mm(full.shape, sp) == pytest.approx(diag)
    s = score_masks(pred, ref, sp)
    assert s.flag == ("missed" if missing == "pred" else "false_positive") == empty_flag(pred, ref)
    assert (s.dice, s.iou, s.nsd) == (0.0, 0.0, 0.0)
    assert s.hd95 == pytest.approx(diag) and s.assd == pytest.approx(diag)
    assert hd95(pred, ref, sp) == pytest.approx(diag) and assd(pred, ref, sp) == pytest.approx(diag)
    assert dice(pred, ref) == 0.0 and iou(pred, ref) == 0.0 and nsd(pred, ref, sp) == 0.0
    assert (s.volume_pred_ml, s.volume_ref_ml) == ((0.0, 0.054) if missing == "pred" else (0.054, 0.0))


def test_invalid_arguments_raise_with_the_value():
    pred, ref = _cubes()
    with pytest.raises(ValueError, match="shape"):
        dice(pred, ref[:5])
    with pytest.raises(ValueError, match="boolean"):
        dice(pred.astype(np.uint8), ref)
    with pytest.raises(ValueError, match="spacing"):
        hd95(pred, ref, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(pred, ref, 1.0, tolerance=-1)
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(pred, np.zeros_like(ref), 1.0)
