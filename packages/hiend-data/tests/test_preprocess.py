"""preprocess_case and restore_label on the real scans: exact round trips and the patient's left side.

World coordinates are nibabel's RAS+: +x points to the patient's RIGHT, so the patient's left half is
world x below the midline (in the LPS scan's own array that is the high end of axis 0). The real label
map confirms it: TotalSegmentator's spleen and left kidney sit at negative x, liver and right kidney at
positive x.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from pydantic import ValidationError

from hiend_data import (
    InputError,
    Plan,
    PreprocessRecord,
    Volume,
    load_volume,
    preprocess_case,
    restore_label,
    save_volume,
)
from hiend_data.io import load_label
from hiend_data.preprocess import restore_array

SLAB, SEG, LPS = (
    "body_ct_3mm_ras_30slices.nii.gz",
    "body_ct_3mm_ras_30slices_seg.nii.gz",
    "abdomen_ct_1.5mm_lps.nii.gz",
)


def _world_x(affine, shape) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (np.asarray(affine)[0, :3] @ idx + np.asarray(affine)[0, 3]).reshape(shape)


@pytest.fixture(scope="module")
def slab(ct_dir):
    img = load_volume(ct_dir / SLAB)
    return img, load_label(ct_dir / SEG, like=img)


@pytest.fixture(scope="module")
def lps(ct_dir):
    img = load_volume(ct_dir / LPS)
    lab = Volume((img.array > 200).astype(np.uint8) + (img.array > 600), img.affine, img.path)  # 0, 1, 2
    return img, lab


def test_real_label_round_trip_is_voxel_identical(slab):
    img, lab = slab
    pre = preprocess_case(img, Plan(), lab)
    assert pre.image.shape[1:] == pre.label.shape and pre.image.shape[0] == 1
    assert pre.record.resampled_shape == (244, 202, 60)  # 3 mm -> 1.5 mm doubles every axis
    assert pre.record.spacing == pytest.approx((1.5, 1.5, 1.5))
    back = restore_label(pre.label, pre.record)
    assert back.shape == img.shape
    np.testing.assert_array_equal(back, lab.array)
    assert sorted(np.unique(pre.label).tolist()) == sorted(np.unique(lab.array).tolist())


def test_lps_threshold_label_round_trip_is_voxel_identical(lps):
    img, lab = lps
    pre = preprocess_case(img, Plan(), lab)
    assert pre.record.ornt == [(0, -1), (1, -1), (2, 1)]  # L->R and P->A flips, S kept
    assert pre.record.original_orientation == "LPS"
    back = restore_label(pre.label, pre.record)
    np.testing.assert_array_equal(back, lab.array)


@pytest.mark.parametrize("which", ["slab", "lps"])
def test_left_half_prediction_lands_on_patient_left(request, which):
    img, _ = request.getfixturevalue(which)
    pre = preprocess_case(img, Plan())
    aff = np.asarray(pre.record.affine)
    assert pre.record.shape == pre.image.shape[1:]
    x_pre = _world_x(aff, pre.record.shape)
    mid = float((x_pre.min() + x_pre.max()) / 2)
    pred = (x_pre < mid).astype(np.uint8)  # patient's left = world x below the midline (RAS+)
    # in RAS space the patient's left is the low end of axis 0
    assert pred[: pred.shape[0] // 2 - 1].all() and not pred[pred.shape[0] // 2 + 1 :].any()

    out = restore_label(pred, pre.record)
    assert out.shape == img.shape
    x0 = _world_x(img.affine, img.shape)
    step = max(img.spacing)
    inside = restore_label(np.ones_like(pred), pre.record) == 1  # voxels within the foreground crop
    assert (x0[out == 1] < mid + step).all() and (x0[(out == 0) & inside] >= mid - step).all()
    assert 0.4 < out[inside].mean() < 0.6
    x_lps = -x0  # DICOM/LPS world: +x is the patient's left, so the marked half is at positive LPS x
    assert (x_lps[out == 1] > -mid - step).all()
    if img.orientation[0] == "L":  # LPS array: axis 0 runs to the patient's left
        cols = np.flatnonzero(out.any(axis=(1, 2)))
        assert cols[-1] == img.shape[0] - 1 and cols[0] > img.shape[0] // 3


def test_saved_prediction_lands_on_the_input_grid(lps, ct_dir, tmp_path):
    img, lab = lps
    pre = preprocess_case(img, Plan(), lab)
    path = save_volume(tmp_path / "pred.nii.gz", restore_label(pre.label, pre.record), like=img)
    ref = nib.load(str(ct_dir / LPS))
    out = nib.load(str(path))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == ("L", "P", "S")
    assert out.header.get_data_dtype() == np.uint8
    assert out.header.get_slope_inter() == (None, None)  # no intensity scaling on a label map
    np.testing.assert_array_equal(np.asarray(out.dataobj), lab.array)


def test_left_half_matches_anatomy(slab, ct_dir):
    img, lab = slab
    names = json.loads((ct_dir / "body_ct_3mm_ras_30slices_seg_labels.json").read_text())
    value = {v: int(k) for k, v in names["labels_present_in_example_seg"].items()}
    pre = preprocess_case(img, Plan(), lab)
    x_pre = _world_x(pre.record.affine, pre.record.shape)
    spine = x_pre[pre.label == value["spinal_cord"]].mean()  # the patient's midline
    left = restore_label((x_pre < spine).astype(np.uint8), pre.record).astype(bool)
    for organ in ("spleen", "kidney_left", "autochthon_left", "iliopsoas_left", "rib_left_9"):
        assert left[lab.array == value[organ]].mean() > 0.98, organ
    for organ in ("kidney_right", "autochthon_right", "iliopsoas_right", "rib_right_9"):
        assert left[lab.array == value[organ]].mean() < 0.02, organ
    assert left[lab.array == value["liver"]].mean() < 0.15  # only the tip of its left lobe crosses


def test_ct_intensity_and_crop(slab):
    img, _ = slab
    cropped = preprocess_case(img, Plan())
    full = preprocess_case(img, Plan(crop_to_foreground=False))
    assert full.image.shape[1:] == full.record.resampled_shape
    assert 0.0 <= cropped.image.min() and cropped.image.max() <= 1.0
    r = cropped.record
    box = tuple(slice(a, b) for a, b in zip(r.crop_start, r.crop_stop, strict=True))
    np.testing.assert_array_equal(cropped.image[0], full.image[0][box])
    outside = full.image[0].copy()
    outside[box] = 0
    assert not outside.any()  # nothing above -175 HU was cropped away
    np.testing.assert_allclose(
        np.asarray(r.affine) @ [0, 0, 0, 1], np.asarray(full.record.affine) @ [*r.crop_start, 1]
    )


def test_window_is_configurable(slab):
    img, _ = slab
    pre = preprocess_case(img, Plan(window=(-1000.0, 1000.0), crop_to_foreground=False))
    raw = preprocess_case(
        Volume(img.array.astype(np.float32), img.affine),
        Plan(window=(-5000.0, 5000.0), crop_to_foreground=False),
    )
    hu = raw.image * 10000 - 5000
    np.testing.assert_allclose(pre.image, np.clip((hu + 1000) / 2000, 0, 1), atol=2e-4)


def test_labels_outside_body_are_kept(nii):
    ct = nii.tiny_ct()
    lab = np.zeros(ct.shape, np.uint8)
    lab[0, 0, 0] = 3  # in the air, outside the CT foreground
    vol = Volume(ct, np.diag([3.0, 3.0, 3.0, 1.0]))
    pre = preprocess_case(vol, Plan(), Volume(lab, vol.affine))
    np.testing.assert_array_equal(restore_label(pre.label, pre.record), lab)


def test_oblique_affine_handled_exactly(nii):
    theta = np.radians(25)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-3.0, 3.0, 3.0])  # oblique and flipped
    aff[:3, 3] = (10, -20, 5)
    ct = nii.tiny_ct()
    lab = np.zeros(ct.shape, np.uint8)
    lab[5, 4, 3] = 1
    pre = preprocess_case(Volume(ct, aff), Plan(), Volume(lab, aff))
    assert pre.record.obliquity_deg == pytest.approx(25.0)
    np.testing.assert_array_equal(restore_label(pre.label, pre.record), lab)
    # the labelled voxel's world centre is preserved: its 2x2x2 block in preprocessed space is centred on it
    where = np.argwhere(pre.label == 1)
    assert len(where) == 8
    centre = np.asarray(pre.record.affine) @ [*where.mean(axis=0), 1]
    np.testing.assert_allclose(centre, aff @ [5, 4, 3, 1], atol=1e-9)


def test_mri_zscore_plan(nii):
    rng = np.random.default_rng(0)
    arr = np.zeros((10, 10, 10), np.float32)
    arr[2:8, 2:8, 2:8] = rng.normal(300, 50, size=(6, 6, 6))
    before = arr.copy()
    pre = preprocess_case(Volume(arr, np.diag([1.5, 1.5, 1.5, 1.0])), Plan(modality="mri"))
    np.testing.assert_array_equal(arr, before)  # the caller's array is never modified
    assert pre.image.shape == (1, 6, 6, 6)  # cropped to the non-zero box
    assert pre.image.mean() == pytest.approx(0, abs=1e-5) and pre.image.std() == pytest.approx(1, abs=1e-4)
    mean, std = pre.record.intensity[0]
    assert mean == pytest.approx(float(arr[arr != 0].mean()), rel=1e-5)


def test_multichannel_image(nii):
    ct = nii.tiny_ct().astype(np.float32)
    pre = preprocess_case(Volume(np.stack([ct, ct + 100]), np.diag([3.0, 3.0, 3.0, 1.0])), Plan())
    assert pre.image.shape[0] == 2 and pre.record.channels == 2
    assert (pre.image[1] >= pre.image[0]).all()


def test_record_json_round_trip(lps):
    img, lab = lps
    rec = preprocess_case(img, Plan(), lab).record
    again = PreprocessRecord.model_validate_json(rec.model_dump_json())
    assert again == rec and again.shape == rec.shape


def test_restore_array_linear_for_probabilities(slab):
    img, lab = slab
    pre = preprocess_case(img, Plan(), lab)
    prob = (pre.label == 5).astype(np.float32)[None]  # liver probability, [1, X', Y', Z']
    back = restore_array(prob, pre.record, order=1)
    assert back.shape == (1, *img.shape) and back.dtype == np.float32
    np.testing.assert_array_equal(back[0] > 0.5, lab.array == 5)


@pytest.mark.parametrize(
    ("pred", "match"),
    [
        (np.zeros((3, 3, 3), np.uint8), "does not match the preprocessed shape"),
        (np.zeros((3, 3, 3), np.float32), "integer label map"),
    ],
)
def test_restore_label_refuses_bad_predictions(lps, pred, match):
    img, _ = lps
    rec = preprocess_case(img, Plan()).record
    with pytest.raises(InputError, match=match):
        restore_label(pred, rec)


def test_bad_inputs_to_preprocess(nii):
    ct = nii.tiny_ct().astype(np.float32)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    bad = ct.copy()
    bad[0, 0, :3] = np.nan
    with pytest.raises(InputError, match="3 non-finite voxels"):
        preprocess_case(Volume(bad, aff), Plan())
    with pytest.raises(InputError, match="non-integer"):
        preprocess_case(Volume(ct, aff), Plan(), Volume(np.full(ct.shape, 0.5, np.float32), aff))
    with pytest.raises(InputError, match="negative"):
        preprocess_case(Volume(ct, aff), Plan(), Volume(np.full(ct.shape, -1, np.int16), aff))
    with pytest.raises(InputError, match="grid"):
        preprocess_case(Volume(ct, aff), Plan(), Volume(np.zeros((3, 3, 3), np.uint8), aff))


def test_plan_defaults_json_and_validation():
    plan = Plan.paper()
    assert plan == Plan()
    assert (
        plan.orientation,
        plan.spacing,
        plan.modality,
        plan.window,
        plan.crop_to_foreground,
        plan.crop_size,
    ) == ("RAS", (1.5, 1.5, 1.5), "ct", (-175.0, 250.0), True, (96, 96, 96))
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.model_validate(json.loads(plan.model_dump_json())) == plan
    assert Plan(window=(-1000, 1000)).digest() != plan.digest()
    assert Plan(orientation="lps").orientation == "LPS"
    for bad in (
        {"spacing": (0, 1, 1)},
        {"window": (10, -10)},
        {"orientation": "RRS"},
        {"foo": 1},
        {"modality": "pet"},
    ):
        with pytest.raises(ValidationError):
            Plan(**bad)


def test_matches_the_papers_monai_pipeline_where_no_resampling_is_needed(ct_dir):
    """On the 1.5 mm LPS scan the paper's MONAI chain (Orientation RAS, Spacing 1.5, ScaleIntensityRange
    [-175, 250] -> [0, 1] clipped, CropForeground) and ours agree voxel for voxel, affine included.
    (With resampling the grids differ on purpose: MONAI keeps the first voxel centre, we keep the
    extent, which is what makes label round trips exact.)"""
    from monai import transforms as T

    keys = ["image"]
    chain = T.Compose(
        [
            T.LoadImaged(keys=keys),
            T.EnsureChannelFirstd(keys=keys),
            T.Orientationd(keys=keys, axcodes="RAS"),
            T.Spacingd(keys=keys, pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
            T.ScaleIntensityRanged(keys=keys, a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
            T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        ]
    )
    ref = chain({"image": str(ct_dir / LPS)})["image"]
    pre = preprocess_case(load_volume(ct_dir / LPS), Plan())
    assert tuple(ref.shape) == pre.image.shape
    np.testing.assert_allclose(pre.image, ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pre.record.affine), ref.affine.numpy(), atol=1e-4)


def test_a_scan_that_never_reaches_air_is_warned_about_as_not_ct(capsys):
    """An MR scan preprocessed without --modality mri was windowed as CT in silence (38 % of its voxels
    saturated)."""
    from hiend_data.io import Volume
    from hiend_data.preprocess import preprocess_case

    rng = np.random.default_rng(0)
    mr = Volume(rng.uniform(0, 1200, (24, 24, 16)).astype(np.float32), np.diag([1.5, 1.5, 3.0, 1.0]))
    preprocess_case(mr, Plan(spacing=(3.0, 3.0, 3.0)))
    err = capsys.readouterr().err
    assert "no voxel below -500" in err and "--modality mri" in err
    preprocess_case(mr, Plan(spacing=(3.0, 3.0, 3.0), modality="mri"))
    ct = Volume(
        np.where(rng.random((24, 24, 16)) < 0.3, -1000, 40).astype(np.float32), np.diag([1.5, 1.5, 3.0, 1.0])
    )
    preprocess_case(ct, Plan(spacing=(3.0, 3.0, 3.0)))
    assert capsys.readouterr().err == ""  # MR as MR, and CT with air: nothing to say
