"""Compact caches (``Plan.cache_dtype``): uint8 / int16 / float16 images give the float32 cache's crops to
the quantization step, with the same centres, augmentation and labels; old float32 caches still read."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hiend_data import InputError, Plan
from hiend_data.augment import AugmentParams, augment, view_plan
from hiend_data.cache import Cache, preprocess_dataset
from hiend_data.cli import app
from hiend_data.discovery import Case
from hiend_data.phantom import make_phantom_dataset
from hiend_data.sampling import CropSampler, SamplerConfig, crop_box
from hiend_data.sampling.crops import copy_padded, copy_view
from hiend_data.storage import LEVELS, decode, encode

runner = CliRunner()
DTYPES = ("float32", "uint8", "int16")


def _caches(cases: list[Case] | Path, root: Path, dtypes=DTYPES, **plan) -> dict[str, Cache]:
    return {
        d: preprocess_dataset(cases, root / d, Plan(cache_dtype=d, **plan), workers=0, progress=False)
        for d in dtypes
    }


def _bound(ref: np.ndarray, aug: AugmentParams, levels: int) -> np.ndarray:
    """Largest allowed |compact - float32| per voxel of an augmented crop ``ref`` (float32 cache): half a
    step, one step for values less than half a step above 0 (stored as the first step), times the
    crop's intensity scale, plus float rounding."""
    scale = 1.0 if aug.scale is None else aug.scale
    value = (ref - (aug.shift or 0.0)) / scale  # the crop before scale and shift
    step = np.where((value > 1e-7) & (value < 0.5 / levels - 1e-7), 1.0, 0.5) / levels
    return step * scale + 1e-6


def _compare(caches: dict[str, Cache], cfg: SamplerConfig, keys: range) -> dict[str, int]:
    """Every compact cache's crops against the float32 cache's: same draws, labels identical, images to
    the step. Returns counts of padded crops and of voxels in the half-step sliver above 0."""
    samplers = {d: CropSampler(c, cfg, seed=7) for d, c in caches.items()}
    seen = {"padded": 0, "sliver": 0, "crops": 0}
    for name in caches["float32"].cases:
        for key in keys:
            ref_plan = samplers["float32"].plan(name, samplers["float32"].rng(key))
            ref_img, ref_lab = samplers["float32"].fill(name, ref_plan)
            ref_img, ref_lab = ref_img.copy(), None if ref_lab is None else ref_lab.copy()
            seen["padded"] += sum(p.padded for p in ref_plan)
            seen["crops"] += len(ref_plan)
            for d in caches:
                if d == "float32":
                    continue
                s = samplers[d]
                plan = s.plan(name, s.rng(key))
                assert plan == ref_plan  # centres, kinds, boxes and augmentation: the draw ignores the dtype
                img, lab = s.fill(name, plan)
                assert img.dtype == np.float32 and img.flags.c_contiguous
                if ref_lab is not None:
                    np.testing.assert_array_equal(lab, ref_lab)
                    assert lab.dtype == ref_lab.dtype
                levels = LEVELS[d]
                for i, p in enumerate(plan):
                    err = np.abs(img[i] - ref_img[i])
                    assert (err <= _bound(ref_img[i], p.aug, levels)).all(), (d, name, key, i, err.max())
                    if d == "uint8" and p.aug.scale is None and p.aug.shift is None:
                        seen["sliver"] += int(((ref_img[i] > 0) & (ref_img[i] < 0.5 / 255)).sum())
    return seen


# ------------------------------------------------------------------------------------------ the plan


def test_auto_picks_uint8_for_ct_windows_and_float32_for_mri() -> None:
    assert Plan().cache_dtype == "auto" and Plan().resolved_cache_dtype == "uint8"  # 1.67 HU steps
    assert Plan(window=(-255.0, 255.0)).resolved_cache_dtype == "uint8"  # 2 HU steps: the tolerance
    assert Plan(window=(-1000.0, 1000.0)).resolved_cache_dtype == "int16"  # 7.8 HU steps: too coarse
    assert Plan(modality="mri").resolved_cache_dtype == "float32"
    assert Plan(modality="mri", cache_dtype="float16").resolved_cache_dtype == "float16"
    assert Plan(cache_dtype="int16").resolved_cache_dtype == "int16"
    # storage is not preprocessing: the digest ignores it and is the one plans had before the field
    old = {k: v for k, v in Plan().model_dump(mode="json").items() if k != "cache_dtype"}
    old_digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert {Plan(cache_dtype=d).digest() for d in ("auto", *DTYPES, "float16")} == {old_digest}
    assert Plan.from_json(Plan(cache_dtype="int16").to_json()) == Plan(cache_dtype="int16")


def test_bad_cache_dtype_is_refused_naming_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'int8' is not a cache dtype"):
        Plan(cache_dtype="int8")
    with pytest.raises(ValueError, match="MRI z-scores need float16 or float32"):
        Plan(modality="mri", cache_dtype="uint8")
    with pytest.raises(InputError, match="cache dtype 'int8'"):
        encode(np.zeros((1, 2, 2, 2), np.float32), "int8")
    with pytest.raises(InputError, match=r"scan7: values outside \[0, 1\]"):
        encode(np.full((1, 2, 2, 2), -0.5, np.float32), "uint8", name="scan7")
    with pytest.raises(InputError, match="beyond float16's range"):
        encode(np.full((1, 2, 2, 2), 1e5, np.float32), "float16")
    # a cache folder whose plan.json names one
    (tmp_path / "c" / "cases").mkdir(parents=True)
    (tmp_path / "c" / "plan.json").write_text(
        json.dumps({**Plan().model_dump(mode="json"), "cache_dtype": "int8"})
    )
    with pytest.raises(InputError, match=r"plan\.json: invalid plan .*'int8' is not a cache dtype"):
        Cache.open(tmp_path / "c")
    # the command line: exit 2, one line naming the value
    res = runner.invoke(app, ["preprocess", str(tmp_path), str(tmp_path / "out"), "--cache-dtype", "int8"])
    assert (
        res.exit_code == 2
        and "--cache-dtype 'int8'" in res.output
        and len(res.output.strip().splitlines()) == 1
    )
    res = runner.invoke(
        app,
        ["preprocess", str(tmp_path), str(tmp_path / "out"), "--modality", "mri", "--cache-dtype", "uint8"],
    )
    assert res.exit_code == 2 and "cache_dtype 'uint8'" in res.output


# ------------------------------------------------------------------------------------- the encoding


@pytest.mark.parametrize("dtype", ["uint8", "int16"])
def test_codes_are_within_half_a_step_and_keep_the_foreground(dtype: str) -> None:
    levels = LEVELS[dtype]
    rng = np.random.default_rng(0)
    v = rng.random((2, 20, 9, 7), dtype=np.float32)  # two channels, more planes than one slab
    v[0, :3] = 0.0
    v[0, 3, :, 0] = rng.uniform(1e-7, 0.5 / levels, size=9).astype(np.float32)  # the sliver above 0
    v[1, 4] = 1.0
    stored, scale = encode(v, dtype)
    assert stored.dtype == np.dtype(dtype) and stored.shape == v.shape and scale == 1.0 / levels
    back = decode(stored, scale)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(stored > 0, v > 0)  # foreground (> 0) is the same voxels
    sliver = (v > 0) & (v < 0.5 / levels)
    err = np.abs(back - v)
    assert err[~sliver].max() <= 0.5 / levels + 1e-7 and err[sliver].max() < 1.0 / levels
    assert stored[0, :3].max() == 0 and (stored[1, 4] == levels).all() and back.max() == pytest.approx(1.0)


def test_float16_keeps_tiny_positive_values_positive() -> None:
    v = np.array([0.0, 1e-9, -1e-9, -3.5, 2.25, 1e-3], np.float32).reshape(1, 1, 2, 3)
    stored, scale = encode(v, "float16")
    assert scale is None and stored.dtype == np.float16
    np.testing.assert_array_equal(stored > 0, v > 0)
    np.testing.assert_allclose(decode(stored, None), v, rtol=2**-11, atol=1e-7)


# ------------------------------------------------------------------------------- crops, side by side


def test_real_scan_crops_equal_the_float32_cache_to_the_step(shared_data: Path, tmp_path: Path) -> None:
    """The real LPS abdominal CT, the pre-training recipe: same seed -> same centres and augmentation,
    images within half a step (uint8: 1/510 of the window, 0.83 HU) of the float32 cache's."""
    scan = shared_data / "ct" / "abdomen_ct_1.5mm_lps.nii.gz"
    caches = _caches([Case("abdomen", [scan])], tmp_path)
    stored = {d: c.case("abdomen").stored for d, c in caches.items()}
    assert {d: a.dtype.name for d, a in stored.items()} == {d: d for d in DTYPES}
    sizes = {d: (tmp_path / d / "cases" / "abdomen.npy").stat().st_size for d in DTYPES}
    assert sizes["uint8"] < 0.26 * sizes["float32"] and sizes["int16"] < 0.51 * sizes["float32"]
    for d in DTYPES[1:]:
        case = caches[d].case("abdomen")
        assert case.image_dtype == d and case.meta["format"] == 2 and case.image_scale == 1.0 / LEVELS[d]
        np.testing.assert_array_equal(case.foreground, caches["float32"].case("abdomen").foreground)
        assert case.image.dtype == np.float32  # values, decoded
    seen = _compare(caches, SamplerConfig.pretrain(), range(6))
    assert seen["crops"] == 48


def test_labelled_phantoms_padding_and_fine_tuning_draws(tmp_path: Path) -> None:
    """Phantoms resampled to 4 mm (fractional HU: values in the sliver above the window's low end; a
    scan's 250-350 mm of coverage is fewer slices than a 96-voxel crop: padded crops): fine-tuning and
    pre-training recipes, class-balanced centres and the image_threshold gate; labels identical."""
    src = make_phantom_dataset(tmp_path / "raw", cases=2, seed=3)
    caches = _caches(src, tmp_path, spacing=(4.0, 4.0, 4.0))
    for name in caches["float32"].cases:
        ref = caches["float32"].case(name)
        assert ref.meta["format"] == 1 and ref.image_dtype == "float32"
        values = np.asarray(ref.image)
        assert ((values > 0) & (values < 0.5 / 255)).any()  # rounding alone would turn these into 0
        for d in DTYPES[1:]:
            np.testing.assert_array_equal(caches[d].case(name).label, ref.label)
            # the foreground the sampler draws centres from (image > 0) is the same set of voxels
            np.testing.assert_array_equal(np.asarray(caches[d].case(name).stored) > 0, values > 0)
    seen = _compare(caches, SamplerConfig.finetune(num_samples=8, class_balanced=True), range(4))
    seen_pre = _compare(caches, SamplerConfig.pretrain(), range(3))
    assert seen["padded"] + seen_pre["padded"] > 0  # the padded path was compared
    assert seen["sliver"] + seen_pre["sliver"] > 0  # and voxels stored as the first step


def test_mri_float16_cache(tmp_path: Path, nii) -> None:
    rng = np.random.default_rng(5)
    img = np.zeros((40, 36, 30), np.float32)
    img[4:36, 4:32, 3:27] = rng.gamma(4.0, 50.0, size=(32, 28, 24))
    nii.write(tmp_path / "raw" / "mr_0000.nii.gz", img, np.diag([1.5, 1.5, 1.5, 1.0]))
    cases = [Case("mr", [tmp_path / "raw" / "mr_0000.nii.gz"])]
    caches = _caches(cases, tmp_path, dtypes=("float32", "float16"), modality="mri", crop_size=(16, 16, 16))
    assert caches["float16"].case("mr").stored.dtype == np.float16
    cfg = SamplerConfig.pretrain(crop_size=(16, 16, 16))
    a, b = CropSampler(caches["float32"], cfg, seed=1), CropSampler(caches["float16"], cfg, seed=1)
    for key in range(5):
        pa, pb = a.plan("mr", a.rng(key)), b.plan("mr", b.rng(key))
        assert pa == pb
        ref, got = a.fill("mr", pa)[0], b.fill("mr", pb)[0]
        for i, p in enumerate(pa):  # float16: 11 significant bits of the value before the shift
            bound = np.abs(ref[i] - (p.aug.shift or 0.0)) * 2**-11 + 1e-6
            assert (np.abs(got[i] - ref[i]) <= bound).all()


# ------------------------------------------------------------------------------ old caches, rewrites


def test_old_float32_cache_still_reads_and_a_new_dtype_rewrites(tmp_path: Path, shared_data: Path) -> None:
    scan = shared_data / "ct" / "abdomen_ct_1.5mm_lps.nii.gz"
    cases = [Case("abdomen", [scan])]
    new = preprocess_dataset(cases, tmp_path / "new", Plan(cache_dtype="float32"), workers=0, progress=False)
    out = tmp_path / "old"
    preprocess_dataset(cases, out, Plan(cache_dtype="float32"), workers=0, progress=False)
    # as written before compact caches: no cache_dtype in plan.json, no image_dtype / image_scale
    plan = json.loads((out / "plan.json").read_text())
    del plan["cache_dtype"]
    (out / "plan.json").write_text(json.dumps(plan))
    meta_path = out / "cases" / "abdomen.json"
    meta = json.loads(meta_path.read_text())
    del meta["image_dtype"], meta["image_scale"]
    meta_path.write_text(json.dumps(meta))

    old = Cache.open(out)
    assert old.cases == ["abdomen"] and old.plan.cache_dtype == "auto"
    case = old.case("abdomen")
    assert case.image_dtype == "float32" and case.image_scale is None and isinstance(case.image, np.memmap)
    cfg = SamplerConfig.pretrain()
    a, b = CropSampler(old, cfg, seed=2), CropSampler(new, cfg, seed=2)
    for key in range(3):
        np.testing.assert_array_equal(
            a.sample_batch("abdomen", a.rng(key))[0], b.sample_batch("abdomen", b.rng(key))[0]
        )

    # the same plan with float32 storage: up to date, nothing rewritten
    before = meta_path.stat().st_mtime_ns
    preprocess_dataset(cases, out, Plan(cache_dtype="float32"), workers=0, progress=False)
    assert meta_path.stat().st_mtime_ns == before
    # the default plan (auto: uint8 for CT) rewrites it compactly, under the same digest
    cache = preprocess_dataset(cases, out, Plan(), workers=0, progress=False)
    meta = json.loads(meta_path.read_text())
    assert meta["image_dtype"] == "uint8" and meta["format"] == 2 and meta["plan_digest"] == Plan().digest()
    assert cache.case("abdomen").stored.dtype == np.uint8
    # and back to float32: rewritten again
    preprocess_dataset(cases, out, Plan(cache_dtype="float32"), workers=0, progress=False)
    assert json.loads(meta_path.read_text())["image_dtype"] == "float32"


# --------------------------------------------------------------------------------- the copy kernels


def _augs() -> list[AugmentParams]:
    out = []
    for flips in [(), (2,), (0, 1), (0, 1, 2)]:
        for k in range(4):
            for scale, shift in [(None, None), (1.07, None), (None, -0.04), (0.93, 0.06)]:
                out.append(AugmentParams(flips, k, (0, 1), scale, shift))
    return out


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int16", "float16"])
def test_fused_copy_matches_decode_then_augment(dtype: str) -> None:
    """copy_view / copy_padded with the decode multiplier: the naive path (decode the whole volume to
    float32, cut, pad, augment with copies) to float rounding; float32 volumes bit for bit."""
    rng = np.random.default_rng(1)
    values = rng.random((1, 30, 26, 21), dtype=np.float32)
    values[0, :4] = 0.0
    stored, scale = encode(values, dtype)
    full = decode(stored, scale)
    size = (16, 16, 16)
    for aug in _augs():
        rev, swap = view_plan(aug)
        src, _, padded = crop_box((12, 20, 9), full.shape[1:], size)
        assert not padded
        ref, _ = augment(full[(slice(None), *src)], None, aug)
        out = np.empty((1, *size), np.float32)
        copy_view(stored, out, src, rev, swap, aug, True, True, scale)
        if dtype == "float32":
            np.testing.assert_array_equal(out, ref)
        else:
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
        # padded: the crop is larger than the volume along axes 0 and 2
        big = (40, 16, 24)
        if aug.rot_k % 2:
            continue  # rot90 needs equal sizes in its plane
        src, dst, padded = crop_box((15, 3, 10), full.shape[1:], big)
        assert padded
        ref_pad = np.full((1, *big), 0.25, np.float32)
        ref_pad[(slice(None), *dst)] = full[(slice(None), *src)]
        ref, _ = augment(ref_pad, None, aug)
        out = np.empty((1, *big), np.float32)
        copy_padded(stored, out, src, dst, 0.25, aug, True, True, scale)
        if dtype == "float32":
            np.testing.assert_array_equal(out, ref)
        else:
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_fused_copy_is_one_pass_without_a_crop_sized_temporary() -> None:
    """Decoding, scale and shift happen in the copy: nothing the size of the crop is allocated (a
    decode-then-augment path would allocate the float32 crop at least once)."""
    rng = np.random.default_rng(2)
    stored, scale = encode(rng.random((1, 80, 80, 72), dtype=np.float32), "uint8")
    out = np.empty((1, 64, 64, 64), np.float32)
    src, _, _ = crop_box((40, 40, 36), stored.shape[1:], out.shape[1:])
    tracemalloc.start()
    try:
        for aug in _augs():
            rev, swap = view_plan(aug)
            tracemalloc.reset_peak()
            copy_view(stored, out, src, rev, swap, aug, True, True, scale)
            assert tracemalloc.get_traced_memory()[1] < out.nbytes // 4, aug
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------- command line


def test_inspect_and_bench_report_the_dtype(tmp_path: Path, shared_data: Path) -> None:
    scan = shared_data / "ct" / "abdomen_ct_1.5mm_lps.nii.gz"
    preprocess_dataset([Case("abdomen", [scan])], tmp_path / "c", Plan(), workers=0, progress=False)
    res = runner.invoke(app, ["inspect", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["cache_dtype"] == "uint8" and info["image_dtypes"] == {"uint8": 1}
    assert info["bytes_per_voxel"] == 1.0 and info["voxels"] == 120 * 126 * 164 and info["cases"] == 1
    text = runner.invoke(app, ["inspect", str(tmp_path / "c")])
    assert text.exit_code == 0 and "auto -> uint8" in text.output and "1.0 bytes/voxel" in text.output
    res = runner.invoke(app, ["bench", str(tmp_path / "c"), "--seconds", "0.2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["cache_dtype"] == "uint8" and out["crop_shape"] == [1, 96, 96, 96]
    assert "stored as uint8" in res.output
