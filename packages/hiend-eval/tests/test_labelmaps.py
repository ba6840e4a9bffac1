"""The multi-label path gives exactly the numbers of the one-mask-at-a-time path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hiend_eval import score_label_maps, score_masks


def _maps() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    ref = np.zeros((30, 26, 14), np.uint8)
    ref[2:12, 3:15, 1:9] = 1
    ref[14:28, 5:20, 4:13] = 2
    ref[0:5, 20:26, 10:14] = 3  # touches the array border
    ref[20:24, 0:3, 0:2] = 9
    pred = np.roll(ref, (1, 0, -1), axis=(0, 1, 2))
    pred[(rng.random(ref.shape) < 0.05) & (ref == 2)] = 0  # holes
    pred[pred == 3] = 0  # label 3 missed
    pred[25:28, 22:25, 0:3] = 4  # false positive label 4
    return pred, ref


def _same(a, b) -> bool:
    return all(
        (math.isnan(x) and math.isnan(y))
        if isinstance(x, float) and math.isnan(x)
        else x == pytest.approx(y, abs=1e-12)
        for x, y in zip(a.as_dict().values(), b.as_dict().values(), strict=True)
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_equals_full_size_masks(threads):
    pred, ref = _maps()
    sp = (0.9, 1.3, 2.5)
    labels = [1, 2, 3, 4, 5, 9]  # 5: absent from both
    out = score_label_maps(pred, ref, sp, labels, tolerance=1.0, threads=threads)
    assert list(out) == ["1", "2", "3", "4", "5", "9", "foreground"]
    for v in labels:
        assert _same(out[str(v)], score_masks(pred == v, ref == v, sp, tolerance=1.0)), v
    assert _same(out["foreground"], score_masks(pred > 0, ref > 0, sp, tolerance=1.0))
    assert [out[k].flag for k in ("3", "4", "5")] == ["missed", "false_positive", "absent_both"]


def test_labels_default_to_every_value_found():
    pred, ref = _maps()
    out = score_label_maps(pred, ref, (1.0, 1.0, 1.0))
    assert list(out) == ["1", "2", "3", "4", "9", "foreground"]


def test_foreground_is_the_union_of_the_listed_labels_only():
    pred, ref = _maps()
    sp = (1.0, 1.0, 1.0)
    out = score_label_maps(pred, ref, sp, [1, 2])
    keep = np.isin(pred, [1, 2]), np.isin(ref, [1, 2])
    assert _same(out["foreground"], score_masks(*keep, sp))


def test_rejects_bad_label_lists_and_dtypes():
    pred, ref = _maps()
    with pytest.raises(ValueError, match="background"):
        score_label_maps(pred, ref, (1, 1, 1), [0, 1])
    with pytest.raises(ValueError, match="twice"):
        score_label_maps(pred, ref, (1, 1, 1), [1, 1])
    with pytest.raises(ValueError, match="integer"):
        score_label_maps(pred.astype(np.float32), ref, (1, 1, 1), [1])
    with pytest.raises(ValueError, match="shape"):
        score_label_maps(pred[1:], ref, (1, 1, 1), [1])


def test_fortran_order_maps_give_the_same_numbers():
    """NIfTI arrays are Fortran-ordered; they are scored as transposed C-order views with permuted spacing."""
    pred, ref = _maps()
    sp = (0.9, 1.3, 2.5)
    expected = score_label_maps(pred, ref, sp, tolerance=1.5)
    got = score_label_maps(np.asfortranarray(pred), np.asfortranarray(ref), sp, tolerance=1.5)
    mixed = score_label_maps(pred, np.asfortranarray(ref), sp, tolerance=1.5)
    for key, value in expected.items():
        assert _same(got[key], value) and _same(mixed[key], value), key
