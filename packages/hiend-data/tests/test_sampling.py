"""The crop sampler: centre statistics, what a crop holds, padding, determinism, streams, the real cache."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hiend_data.augment import augment, inverse_view
from hiend_data.errors import InputError
from hiend_data.sampling import ArrayCache, ArrayCase, CropSampler, SamplerConfig, crop_box

NO_AUG = dict(flip_prob=0.0, rot90_prob=0.0, scale_prob=0.0, shift_prob=0.0)


def unique_volume(shape=(40, 50, 30), channels=1, zero_below_x=0) -> np.ndarray:
    """float32 [C, X, Y, Z], every voxel a distinct positive integer (exact in float32) except the
    slab x < zero_below_x, which is 0 (background)."""
    n = int(np.prod(shape))
    img = (np.arange(channels * n, dtype=np.float32) + 1).reshape(channels, *shape)
    img[:, :zero_below_x] = 0
    return img


def sampler(image, label=None, seed=0, **cfg) -> CropSampler:
    return CropSampler(ArrayCache({"a": ArrayCase(image, label)}), SamplerConfig.pretrain(**cfg), seed=seed)


# ------------------------------------------------------------------------------------------ config


def test_presets_are_the_papers_recipe() -> None:
    pre, fin = SamplerConfig.pretrain(), SamplerConfig.finetune()
    assert (pre.num_samples, pre.crop_size, pre.pos, pre.neg, pre.centres) == (8, (96, 96, 96), 6, 2, "image")
    assert (pre.flip_prob, pre.rot90_prob, pre.rot90_max_k, pre.rot90_axes) == (0.5, 0.3, 3, (0, 1))
    assert (pre.scale_prob, pre.scale_range, pre.shift_prob, pre.shift_range) == (0.1, 0.1, 0.1, 0.1)
    assert pre.pos_ratio == 0.75
    assert (fin.num_samples, fin.pos, fin.neg, fin.centres, fin.flip_prob, fin.rot90_prob) == (
        4,
        1,
        1,
        "label",
        0.2,
        0.2,
    )
    assert fin.image_threshold == 0.0 and pre.image_threshold is None


@pytest.mark.parametrize(
    "bad",
    [
        dict(typo=1),
        dict(pos=0, neg=0),
        dict(crop_size=(96, 64, 96)),
        dict(flip_prob=1.5),
        dict(rot90_axes=(1, 1)),
        dict(flip_axes=(0, 3)),
        dict(num_samples=0),
        dict(image_threshold=0.0),
    ],
)
def test_config_rejects(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SamplerConfig.pretrain(**bad)


def test_non_square_crop_allowed_without_rot90() -> None:
    assert SamplerConfig.pretrain(crop_size=(96, 64, 32), rot90_prob=0).crop_size == (96, 64, 32)


@pytest.mark.parametrize(
    "centre,shape,size,src,dst,padded",
    [
        ((50, 50, 50), (100, 100, 100), (96, 96, 96), (2, 2, 2), (0, 0, 0), False),
        ((0, 99, 47), (100, 100, 100), (96, 96, 96), (0, 4, 0), (0, 0, 0), False),
        ((10, 10, 10), (40, 120, 96), (96, 96, 96), (0, 0, 0), (28, 0, 0), True),
        ((5, 5, 5), (8, 8, 9), (4, 4, 4), (3, 3, 3), (0, 0, 0), False),
    ],
)
def test_crop_box(centre, shape, size, src, dst, padded) -> None:
    s, d, p = crop_box(centre, shape, size)
    assert tuple(x.start for x in s) == src and tuple(x.start for x in d) == dst and p == padded
    for sl, dim, sz in zip(s, shape, size, strict=False):
        assert sl.stop - sl.start == min(dim, sz) and 0 <= sl.start and sl.stop <= dim


# ------------------------------------------------------------------------------- centre statistics


def test_foreground_share_is_pos_over_pos_plus_neg() -> None:
    img = unique_volume((60, 20, 20), zero_below_x=20)  # a third background
    s = sampler(img, num_samples=4000, crop_size=(8, 8, 8), **NO_AUG)
    recs = s.plan("a", s.rng(1))
    fg = np.array([r.foreground for r in recs])
    # every centre is of the kind it claims
    vals = np.array([img[0][r.centre] for r in recs])
    np.testing.assert_array_equal(vals > 0, fg)
    assert abs(fg.mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 4000)
    # the crop always contains its centre
    for r in recs[:200]:
        assert all(sl.start <= c < sl.stop for c, sl in zip(r.centre, r.source, strict=False))


def test_centres_uniform_within_each_kind() -> None:
    img = np.zeros((1, 40, 10, 10), np.float32)
    img[0, :10] = 1.0  # 1000 foreground voxels ...
    img[0, 10:40] = 2.0  # ... and 3000 more: 1 : 3 of the foreground centres
    img[0, 39, 9, 9] = 0.0  # a single background voxel: the background fallback list
    s = sampler(img, num_samples=6000, crop_size=(4, 4, 4), **NO_AUG)
    recs = s.plan("a", s.rng(2))
    fg_vals = np.array([img[0][r.centre] for r in recs if r.foreground])
    share = np.mean(fg_vals == 1.0)
    assert abs(share - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(fg_vals))
    bg = [r.centre for r in recs if not r.foreground]
    assert bg and all(c == (39, 9, 9) for c in bg)


def test_rare_foreground_uses_the_index_list_uniformly() -> None:
    img = np.zeros((1, 50, 50, 40), np.float32)
    points = [(3, 4, 5), (40, 10, 30), (25, 25, 20)]
    for p in points:
        img[0][p] = 0.5
    s = sampler(img, num_samples=3000, crop_size=(8, 8, 8), **NO_AUG)
    recs = s.plan("a", s.rng(3))
    hits = [r.centre for r in recs if r.foreground]
    counts = np.array([hits.count(p) for p in points])
    assert counts.sum() == len(hits)
    assert abs(counts / counts.sum() - 1 / 3).max() < 0.05


@pytest.mark.parametrize("value,expect_fg", [(0.0, False), (0.7, True)])
def test_missing_kind_falls_back_to_the_other(value: float, expect_fg: bool) -> None:
    img = np.full((1, 20, 20, 20), value, np.float32)
    s = sampler(img, num_samples=50, crop_size=(8, 8, 8))
    recs = s.plan("a", s.rng(0))
    assert all(r.foreground == expect_fg for r in recs)


def test_finetune_centres_labelled_and_background_one_to_one() -> None:
    img = np.ones((1, 40, 40, 40), np.float32)  # the image is all foreground: labels must decide
    label = np.zeros((40, 40, 40), np.uint8)
    label[5:15, 5:15, 5:15] = 2
    label[30:35, 30:35, 30:35] = 7
    cache = ArrayCache({"a": ArrayCase(img, label)})
    s = CropSampler(cache, SamplerConfig.finetune(num_samples=4000, crop_size=(16, 16, 16)), seed=0)
    recs = s.plan("a", s.rng(0))
    labels_out = s.fill("a", recs)[1]
    on_label = np.array([label[r.centre] > 0 for r in recs])
    np.testing.assert_array_equal(on_label, [r.foreground for r in recs])
    assert abs(on_label.mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    assert labels_out is not None and labels_out.dtype == np.uint8 and labels_out.shape == (4000, 16, 16, 16)


def test_finetune_centres_stay_inside_the_body() -> None:
    """MONAI's image_threshold=0: labelled and background centres both need image > 0."""
    img = np.zeros((1, 40, 40, 40), np.float32)
    img[0, :, :30] = 0.5  # 'body': y < 30; air above
    label = np.zeros((40, 40, 40), np.uint8)
    label[10:20, 25:35, 10:20] = 1  # an organ half in the air
    s = CropSampler(
        ArrayCache({"a": ArrayCase(img, label)}),
        SamplerConfig.finetune(num_samples=3000, crop_size=(8, 8, 8)),
        seed=0,
    )
    recs = s.plan("a", s.rng(0))
    centres = np.array([r.centre for r in recs])
    assert (centres[:, 1] < 30).all()
    fg = np.array([r.foreground for r in recs])
    np.testing.assert_array_equal(label[tuple(centres.T)] > 0, fg)
    assert abs(fg.mean() - 0.5) < 4 * np.sqrt(0.25 / 3000)
    # the fallback index lists honour the threshold too
    img2 = np.zeros_like(img)
    img2[0, 12, 27, 12] = img2[0, 1, 1, 1] = 1.0
    s2 = CropSampler(
        ArrayCache({"a": ArrayCase(img2, label)}),
        SamplerConfig.finetune(num_samples=200, crop_size=(8, 8, 8)),
        seed=0,
    )
    got = {r.centre for r in s2.plan("a", s2.rng(0))}
    assert got == {(12, 27, 12), (1, 1, 1)}


def test_class_balanced_centres_pick_each_class_equally() -> None:
    """A 1000-voxel organ and an 8-voxel one: uniform over labelled voxels centres the small one on
    0.8 % of the foreground crops; class-balanced on half of them, each voxel of it uniformly."""
    img = np.ones((1, 40, 40, 40), np.float32)
    label = np.zeros((40, 40, 40), np.uint8)
    label[5:15, 5:15, 5:15] = 2
    label[30:32, 30:32, 30:32] = 7
    cache = ArrayCache({"a": ArrayCase(img, label)})
    n = 4000
    plain = CropSampler(cache, SamplerConfig.finetune(num_samples=n, crop_size=(8, 8, 8)), seed=0)
    recs = plain.plan("a", plain.rng(0))
    plain_centres = [r.centre for r in recs]
    small = np.array([label[r.centre] == 7 for r in recs if r.foreground])
    assert small.mean() < 0.02
    bal = CropSampler(
        cache, SamplerConfig.finetune(num_samples=n, crop_size=(8, 8, 8), class_balanced=True), seed=0
    )
    recs = bal.plan("a", bal.rng(0))
    fg = np.array([r.foreground for r in recs])
    values = np.array([label[r.centre] for r in recs])
    np.testing.assert_array_equal(values > 0, fg)  # background crops stay background
    assert abs(fg.mean() - 0.5) < 4 * np.sqrt(0.25 / n)  # pos : neg unchanged
    share = (values[fg] == 7).mean()
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / fg.sum())
    small_centres = [r.centre for r in recs if label[r.centre] == 7]
    _, counts = np.unique(np.array(small_centres), axis=0, return_counts=True)
    assert len(counts) == 8 and counts.min() > 0.5 * counts.mean()  # every voxel of the class, evenly
    # deterministic for a seed
    again = CropSampler(cache, SamplerConfig.finetune(num_samples=n, crop_size=(8, 8, 8)), seed=0)
    assert [r.centre for r in again.plan("a", again.rng(0))] == plain_centres


def test_class_balanced_needs_labels() -> None:
    with pytest.raises(ValidationError, match="class_balanced"):
        SamplerConfig.pretrain(class_balanced=True)


def test_finetune_needs_labels() -> None:
    s = CropSampler(ArrayCache({"a": ArrayCase(np.ones((1, 8, 8, 8), np.float32))}), SamplerConfig.finetune())
    with pytest.raises(InputError, match="labelled"):
        s.sample("a", s.rng(0))


# ------------------------------------------------------------------------------- what a crop holds


def test_crop_is_the_source_region_augmented() -> None:
    img = unique_volume((40, 50, 30), channels=2)
    label = (np.arange(40 * 50 * 30) % 251).reshape(40, 50, 30).astype(np.uint8)
    s = sampler(img, label, num_samples=300, crop_size=(20, 20, 16), scale_prob=0.5, shift_prob=0.5)
    recs = s.plan("a", s.rng(5))
    images, labels = s.fill("a", recs)
    assert images.shape == (300, 2, 20, 20, 16) and images.dtype == np.float32 and images.flags.c_contiguous
    kinds = set()
    for i, r in enumerate(recs):
        region = img[(slice(None), *r.source)]
        ref_img, ref_lab = augment(region, label[r.source], r.aug)
        np.testing.assert_allclose(images[i], ref_img, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(labels[i], ref_lab)
        assert images[i].flags.c_contiguous
        a = r.aug
        kinds.add((a.flips, a.rot_k, a.scale is not None, a.shift is not None))
    assert len(kinds) > 30  # many combinations exercised, including fused scale/shift


def test_image_and_label_augmented_identically() -> None:
    label = (np.arange(30 * 30 * 20) % 200).reshape(30, 30, 20).astype(np.int32)
    img = (label + 1).astype(np.float32)[None]
    s = sampler(img, label, num_samples=200, crop_size=(12, 12, 12), scale_prob=0, shift_prob=0)
    images, labels = s.sample_batch("a", s.rng(9))
    np.testing.assert_array_equal(images[:, 0] - 1, labels)


def test_padding_only_where_the_volume_is_smaller() -> None:
    img = unique_volume((50, 120, 30))
    label = np.ones((50, 120, 30), np.uint8)
    s = sampler(img, label, num_samples=40, scale_prob=0, shift_prob=0)  # 96^3 crops
    recs = s.plan("a", s.rng(1))
    images, labels = s.fill("a", recs)
    assert images.shape == (40, 1, 96, 96, 96)
    for i, r in enumerate(recs):
        src = r.source
        assert (src[0].start, src[0].stop, src[2].start, src[2].stop) == (0, 50, 0, 30)
        assert src[1].stop - src[1].start == 96  # the long axis is cropped, not padded
        un_img = inverse_view(images[i], r.aug, channel_first=True)  # undo flips/rot90
        un_lab = inverse_view(labels[i], r.aug, channel_first=False)
        inner = (slice(23, 73), slice(0, 96), slice(33, 63))  # (96 - 50) // 2, (96 - 30) // 2
        np.testing.assert_array_equal(un_img[(slice(None), *inner)], img[(slice(None), *src)])
        np.testing.assert_array_equal(un_lab[inner], 1)
        mask = np.ones((96, 96, 96), bool)
        mask[inner] = False
        assert (un_img[0][mask] == 0).all() and (un_lab[mask] == 0).all()


def test_pad_value_and_intensity_apply_to_padding() -> None:
    img = np.ones((1, 10, 10, 10), np.float32)
    s = sampler(
        img,
        num_samples=1,
        crop_size=(12, 12, 12),
        pad_value=-1.0,
        flip_prob=0,
        rot90_prob=0,
        scale_prob=1.0,
        shift_prob=0,
    )
    ((crop, _),) = s.sample("a", s.rng(0))
    scale = crop[0, 6, 6, 6]
    assert 0.9 <= scale <= 1.1
    np.testing.assert_allclose(crop[0, 0, 0, 0], -scale, rtol=1e-6)  # padding is scaled as MONAI does


# ------------------------------------------------------------------------- determinism and streams


def test_deterministic_for_a_seed_and_key() -> None:
    img = unique_volume((40, 40, 40), zero_below_x=10)
    a = sampler(img, seed=7, crop_size=(16, 16, 16)).sample_batch("a", None)[0]
    b = sampler(img, seed=7, crop_size=(16, 16, 16)).sample_batch("a", None)[0]
    c = sampler(img, seed=8, crop_size=(16, 16, 16)).sample_batch("a", None)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    s = sampler(img, seed=7, crop_size=(16, 16, 16))
    np.testing.assert_array_equal(s.sample_batch("a", s.rng(0, 3))[0], s.sample_batch("a", s.rng(0, 3))[0])


def test_sample_batch_is_plan_then_fill() -> None:
    """The same stream through plan + fill or sample_batch gives the same crops, call after call (also
    once a kind has been found rare and goes to its index list)."""
    img = unique_volume((40, 40, 40))
    img[0, :, :, 1:] = 0
    img[0, 5:, :, 0] = 0  # foreground: 200 of 64000 voxels, found rare on the first calls
    a, b = sampler(img, seed=3, crop_size=(16, 16, 16)), sampler(img, seed=3, crop_size=(16, 16, 16))
    for key in range(6):
        crops = a.plan("a", a.rng(key))
        got = a.fill("a", crops)[0].copy()
        np.testing.assert_array_equal(got, b.sample_batch("a", b.rng(key))[0])
        assert [c.foreground for c in crops] == [bool(img[(0, *c.centre)] > 0) for c in crops]


def test_worker_streams_are_distinct() -> None:
    img = unique_volume((40, 40, 40), zero_below_x=10)
    s = sampler(img, crop_size=(16, 16, 16))
    per_worker = [s.sample_batch("a", s.rng(0, w))[0].copy() for w in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(per_worker[i], per_worker[j])
    assert not np.array_equal(s.sample_batch("a", s.rng(1, 0))[0], per_worker[0])  # epoch changes it
    assert sorted(s.epoch_order(0)) == [0] and len(s) == 1


def test_held_crops_are_never_overwritten_and_free_buffers_are_reused() -> None:
    img = unique_volume((30, 30, 30))
    s = sampler(img, crop_size=(8, 8, 8))
    first = s.sample("a", s.rng(0))
    keep = [c.copy() for c, _ in first]
    for _ in range(10):
        s.sample("a", s.rng(1))
    for (c, _), k in zip(first, keep, strict=False):
        np.testing.assert_array_equal(c, k)
    base = s.sample_batch("a", s.rng(2))[0]
    ptr = base.__array_interface__["data"][0]
    del base
    assert s.sample_batch("a", s.rng(3))[0].__array_interface__["data"][0] == ptr


def test_empty_cache_and_unknown_case_are_refused() -> None:
    with pytest.raises(InputError, match="no cases"):
        CropSampler(ArrayCache({}))
    s = sampler(np.ones((1, 8, 8, 8), np.float32), crop_size=(4, 4, 4))
    with pytest.raises(InputError, match="'b'"):
        s.sample("b")
    with pytest.raises(IndexError):
        s.sample(3)


# ------------------------------------------------------------------------------------ real cache


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory: pytest.TempPathFactory):
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("sampling_cache")
    src = make_phantom_dataset(root / "raw", cases=2, seed=11)
    return preprocess_dataset(src, root / "cache", workers=0, progress=False)


@pytest.mark.parametrize("recipe", ["pretrain", "finetune"])
def test_on_the_cache(phantom_cache, recipe: str) -> None:
    cfg = getattr(SamplerConfig, recipe)()
    s = CropSampler(phantom_cache, cfg, seed=0)
    for case in phantom_cache.cases:
        c = phantom_cache.case(case)
        recs = s.plan(case, s.rng(0))
        images, labels = s.fill(case, recs)
        assert images.shape == (cfg.num_samples, 1, 96, 96, 96) and labels.shape == (
            cfg.num_samples,
            96,
            96,
            96,
        )
        source = np.asarray(c.label) if recipe == "finetune" else np.asarray(c.image)[0]
        for r in recs:
            assert (source[r.centre] > 0) == r.foreground
        assert labels.max() > 0 and 0 <= images.min() and images.max() <= 1.2


def test_class_balanced_on_the_cache(phantom_cache) -> None:
    """The cache's per-class index lists: each of the six organs centres about 1/6 of the crops."""
    cfg = SamplerConfig.finetune(
        num_samples=1200, crop_size=(16, 16, 16), pos=1.0, neg=0.0, class_balanced=True
    )
    s = CropSampler(phantom_cache, cfg, seed=0)
    case = phantom_cache.case(phantom_cache.cases[0])
    recs = s.plan(phantom_cache.cases[0], s.rng(0))
    label = np.asarray(case.label)
    values = np.array([label[r.centre] for r in recs])
    shares = np.array([(values == v).mean() for v in case.classes])
    assert len(case.classes) == 6 and (values > 0).all()
    assert np.abs(shares - 1 / 6).max() < 4 * np.sqrt((1 / 6) * (5 / 6) / len(values))


# ------------------------------------------------------------------------------------ MONAI parity


def test_crop_positions_match_monai_in_distribution() -> None:
    """Same volume, same recipe: the distribution of crop starts along each axis agrees with MONAI's
    RandCropByPosNegLabeld (image as label), including the shift that keeps crops inside the volume."""
    from monai.transforms import RandCropByPosNegLabeld

    img = np.zeros((1, 30, 24, 20), np.float32)
    img[0, 2:9, 15:24, 5:12] = np.linspace(0.1, 1, 7 * 9 * 7, dtype=np.float32).reshape(7, 9, 7)
    img[0, 25:30, 0:4, 16:20] = 0.3
    n, size = 4000, (10, 8, 6)
    monai = RandCropByPosNegLabeld(
        keys=["image"], label_key="image", spatial_size=size, pos=6, neg=2, num_samples=n
    )
    monai.set_random_state(seed=0)
    theirs = np.array([[int(v) for v in c["image"].meta["crop_center"]] for c in monai({"image": img})])
    theirs = theirs - np.array(size) // 2  # MONAI records the corrected centre; start = centre - size // 2
    s = sampler(img, num_samples=n, crop_size=size, **NO_AUG)
    recs = s.plan("a", s.rng(0))
    ours = np.array([[sl.start for sl in r.source] for r in recs])
    for ax, dim in enumerate(img.shape[1:]):
        h_ours = np.bincount(ours[:, ax], minlength=dim) / n
        h_theirs = np.bincount(theirs[:, ax], minlength=dim) / n
        assert 0.5 * np.abs(h_ours - h_theirs).sum() < 0.06, ax  # total variation distance


def test_real_scan_foreground_share(shared_data, tmp_path) -> None:
    """The real LPS abdominal CT through the paper's plan: 6 of 8 centres inside the body (> 0 after
    the window), each crop the augmented source region."""
    from hiend_data.cache import preprocess_dataset
    from hiend_data.discovery import Case

    scan = shared_data / "ct" / "abdomen_ct_1.5mm_lps.nii.gz"
    cache = preprocess_dataset([Case("abdomen", [scan])], tmp_path / "cache", workers=0, progress=False)
    image = np.asarray(cache.case("abdomen").image)
    assert image.shape == (1, 120, 126, 164)
    s = CropSampler(cache, SamplerConfig.pretrain(num_samples=3000, crop_size=(16, 16, 16)), seed=1)
    recs = s.plan("abdomen", s.rng(0))
    images, labels = s.fill("abdomen", recs)
    assert labels is None
    fg = np.array([r.foreground for r in recs])
    np.testing.assert_array_equal(fg, [image[(0, *r.centre)] > 0 for r in recs])
    assert abs(fg.mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 3000)
    for i in range(0, 3000, 97):
        ref, _ = augment(image[(slice(None), *recs[i].source)], None, recs[i].aug)
        # the default cache stores uint8 codes: decoding is folded into the scale (an ulp apart)
        np.testing.assert_allclose(images[i], ref, rtol=1e-6, atol=1e-6)


def test_plan_and_sampler_config_refuse_nan_and_infinity():
    import pydantic

    from hiend_data import Plan
    from hiend_data.sampling.config import SamplerConfig

    for make in (
        lambda: Plan(spacing=(float("nan"), 1.5, 1.5)),
        lambda: Plan(window=(-175.0, float("inf"))),
        lambda: SamplerConfig(pos=float("inf")),
    ):
        with pytest.raises(pydantic.ValidationError, match="finite number"):
            make()


def test_plan_refuses_a_window_beyond_a_million_hu():
    import pydantic

    from hiend_data import Plan

    with pytest.raises(pydantic.ValidationError, match="beyond"):
        Plan(window=(-1e308, 1e308))
    assert Plan(window=(-1e6, 1e6)).window == (-1e6, 1e6)
