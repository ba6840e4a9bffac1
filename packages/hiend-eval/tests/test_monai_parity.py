"""Agreement with MONAI 1.6 on the real TotalSegmentator label map and perturbed copies of it.

Wherever a label is in both maps, Dice (1e-6), HD95 (1e-3 mm), ASSD and NSD (voxel counts, MONAI's
default ``use_subvoxels=False``) must match MONAI's ``compute_dice``, ``compute_hausdorff_distance
(percentile=95, spacing=...)``, ``compute_average_surface_distance(symmetric=True)`` and
``compute_surface_dice``. Labels present in one map only are checked against our own convention.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

from hiend_eval import diagonal_mm, score_label_maps

SEG = "ct/body_ct_3mm_ras_30slices_seg.nii.gz"


@pytest.fixture(scope="module")
def real(shared_data):
    import nibabel as nib

    img = nib.load(str(shared_data / SEG))
    return np.asanyarray(img.dataobj).astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()[:3])


def _perturb(ref: np.ndarray, how: str) -> np.ndarray:
    pred = ref.copy()
    if how == "eroded":  # every structure loses its outer voxel layer
        eroded = np.zeros_like(ref)
        for v in np.unique(ref)[1:]:
            eroded[ndimage.binary_erosion(ref == v)] = v
        pred = eroded
    elif how == "shifted":
        pred = np.roll(ref, (2, -1, 1), axis=(0, 1, 2))
    elif how == "dropped":  # spleen, liver and two vertebrae missed entirely
        pred[np.isin(ref, [1, 5, 30, 31])] = 0
    elif how == "islands":  # far-away blobs of existing labels, and a false-positive label
        pred[2:5, 2:6, 1:3] = 7
        pred[110:114, 90:95, 25:28] = 2
        pred[60:63, 5:8, 10:12] = 200
    return pred


def _monai(pred: np.ndarray, ref: np.ndarray, labels: list[int], spacing, tolerance: float):
    lut = np.zeros(256, np.int64)
    lut[labels] = np.arange(1, len(labels) + 1)
    n = len(labels) + 1
    yp = torch.nn.functional.one_hot(torch.from_numpy(lut[pred]), n).permute(3, 0, 1, 2)[None].float()
    yr = torch.nn.functional.one_hot(torch.from_numpy(lut[ref]), n).permute(3, 0, 1, 2)[None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": compute_dice(yp, yr, include_background=False)[0],
            "hd95": compute_hausdorff_distance(yp, yr, percentile=95, spacing=spacing)[0],
            "assd": compute_average_surface_distance(yp, yr, symmetric=True, spacing=spacing)[0],
            "nsd": compute_surface_dice(yp, yr, [tolerance] * len(labels), spacing=spacing)[0],
        }


TOL = {"dice": 1e-6, "hd95": 1e-3, "assd": 1e-3, "nsd": 1e-6}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "spacing"),
    [
        ("identical", None),
        ("eroded", None),
        ("shifted", None),
        ("dropped", None),
        ("islands", None),
        ("eroded", (3.0, 2.0, 1.25)),
        ("islands", (0.8, 0.8, 2.5)),
    ],
)
def test_agrees_with_monai(real, how, spacing):
    ref, header_spacing = real
    spacing = spacing or header_spacing
    pred = _perturb(ref, how)
    labels = sorted((set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())) - {0})
    ours = score_label_maps(pred, ref, spacing, labels, tolerance=3.0)
    theirs = _monai(pred, ref, labels, spacing, tolerance=3.0)
    compared = 0
    for i, v in enumerate(labels):
        s = ours[str(v)]
        in_pred, in_ref = bool((pred == v).any()), bool((ref == v).any())
        if in_pred and in_ref:
            assert s.flag is None
            for metric, tol in TOL.items():
                assert abs(getattr(s, metric) - float(theirs[metric][i])) <= tol, (v, metric)
            compared += 1
        else:  # MONAI gives inf/nan here; ours follows the documented convention
            assert s.flag == ("missed" if in_ref else "false_positive")
            assert (s.dice, s.nsd) == (0.0, 0.0)
            assert s.hd95 == pytest.approx(diagonal_mm(ref.shape, spacing))
            assert float(theirs["dice"][i]) == 0.0 or math.isnan(float(theirs["dice"][i]))
    assert compared >= 35  # most of the 41 structures are compared (eroding removes the smallest)
    if how == "dropped":
        assert [ours[str(v)].flag for v in (1, 5, 30, 31)] == ["missed"] * 4
    if how == "islands":
        assert ours["200"].flag == "false_positive" and ours["7"].flag is None and ours["7"].dice < 1
    if how == "identical":
        assert all(ours[str(v)].hd95 == 0.0 and ours[str(v)].dice == 1.0 for v in labels)


def test_a_miss_leaves_monais_mean_but_not_ours():
    """The README's reason for the empty-case rules: MONAI's HD95 mean over {missed, perfect} is 0 mm."""
    from monai.metrics import HausdorffDistanceMetric

    ref = np.zeros((8, 8, 8), bool)
    ref[2:5, 2:5, 2:5] = True
    empty = np.zeros_like(ref)

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    metric = HausdorffDistanceMetric(percentile=95, reduction="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric(onehot(empty), onehot(ref))  # missed
        metric(onehot(ref), onehot(ref))  # perfect
        assert float(metric.aggregate()) == 0.0
    from hiend_eval import hd95

    ours = [hd95(empty, ref, 1.0), hd95(ref, ref, 1.0)]
    assert np.mean(ours) == pytest.approx(diagonal_mm(ref.shape, 1.0) / 2)
