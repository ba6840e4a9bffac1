"""The preprocessed cache: contents, memory mapping, skipping, invalidation and atomicity."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hiend_data import InputError, Plan, load_volume, preprocess_case, restore_label
from hiend_data import cache as cache_mod
from hiend_data.cache import Cache, preprocess_dataset
from hiend_data.cache import process as cache_process
from hiend_data.io import load_label


@pytest.fixture
def dataset(tmp_path, nii):
    """nnU-Net v2 dataset of three tiny labelled CTs (3 mm, various orientations)."""
    root = tmp_path / "Dataset001_Tiny"
    affs = [np.diag([3.0, 3.0, 3.0, 1.0]), np.diag([-3.0, -3.0, 3.0, 1.0]), np.diag([2.0, 3.0, 4.0, 1.0])]
    for i, aff in enumerate(affs):
        ct = nii.tiny_ct((12 + i, 10, 8), seed=i)
        nii.write(root / "imagesTr" / f"case{i}_0000.nii.gz", ct, aff)
        nii.write(root / "labelsTr" / f"case{i}.nii.gz", nii.tiny_label(ct), aff)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "numTraining": 3,
                "labels": {"background": 0, "tissue": 1, "bone": 2},
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def _mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "cases").iterdir()}


def test_cache_contents_match_preprocess_case(dataset, tmp_path):
    out = tmp_path / "cache"
    plan = Plan(cache_dtype="float32")  # the values themselves (compact dtypes: test_compact_cache.py)
    cache = preprocess_dataset(dataset, out, plan, workers=0, progress=False)
    assert cache.cases == ["case0", "case1", "case2"] and cache.plan == plan
    assert Plan.from_json((out / "plan.json").read_text()) == plan
    for name in cache.cases:
        c = cache.case(name)
        img = load_volume(dataset / "imagesTr" / f"{name}_0000.nii.gz")
        lab = load_label(dataset / "labelsTr" / f"{name}.nii.gz", like=img)
        pre = preprocess_case(img, plan, lab)
        assert isinstance(c.image, np.memmap) and c.image.dtype == np.float32 and c.image.flags.c_contiguous
        np.testing.assert_array_equal(c.image, pre.image)
        np.testing.assert_array_equal(c.label, pre.label)
        assert c.shape == pre.label.shape and c.record == pre.record
        flat = np.asarray(c.label).reshape(-1)
        np.testing.assert_array_equal(c.foreground, np.flatnonzero(flat > 0))
        assert c.foreground.dtype == np.int64
        assert c.classes == [1, 2]
        for v in (0, 1, 2):
            np.testing.assert_array_equal(c.class_indices(v), np.flatnonzero(flat == v))
        assert len(c.class_indices(7)) == 0
        np.testing.assert_array_equal(restore_label(np.asarray(c.label), c.record), lab.array)
    assert cache.case(0).name == "case0"
    assert cache.case("case1") is cache.case(1)  # opened once, memory maps reused


def test_unlabelled_foreground_is_positive_image(tmp_path, nii):
    src = tmp_path / "pool"
    nii.write(src / "a" / "scan.nii.gz", nii.tiny_ct(), np.diag([3.0, 3.0, 3.0, 1.0]))
    cache = preprocess_dataset(src, tmp_path / "c", Plan(), workers=0, progress=False)
    c = cache.case("scan")
    assert c.label is None and c.classes == []
    np.testing.assert_array_equal(c.foreground, np.flatnonzero(np.asarray(c.image[0]).reshape(-1) > 0))
    with pytest.raises(InputError, match="no label map"):
        c.class_indices(1)


def test_index_lists_are_capped_uniform_subsets(dataset, tmp_path):
    cache = preprocess_dataset(dataset, tmp_path / "c", Plan(), workers=0, max_indices=50, progress=False)
    c = cache.case("case0")
    full = np.flatnonzero(np.asarray(c.label).reshape(-1) > 0)
    assert len(full) > 50 and len(c.foreground) == 50
    assert np.all(np.diff(c.foreground) > 0) and np.isin(c.foreground, full).all()
    assert c.meta["n_foreground"] == len(full)
    assert np.all(np.asarray(c.label).reshape(-1)[c.class_indices(1)] == 1) and len(c.class_indices(1)) == 50


def test_workers_give_the_same_cache(dataset, tmp_path):
    a = preprocess_dataset(dataset, tmp_path / "a", Plan(), workers=0, progress=False)
    b = preprocess_dataset(dataset, tmp_path / "b", Plan(), workers=2, progress=False)
    for name in a.cases:
        np.testing.assert_array_equal(a.case(name).image, b.case(name).image)
        np.testing.assert_array_equal(a.case(name).foreground, b.case(name).foreground)


def test_skips_done_cases_and_recomputes_on_plan_or_source_change(dataset, tmp_path, nii):
    out = tmp_path / "c"
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    first = _mtimes(out)
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    assert _mtimes(out) == first  # nothing rewritten

    # a changed source file is recomputed, the others are not
    src = dataset / "imagesTr" / "case1_0000.nii.gz"
    nii.write(src, nii.tiny_ct((13, 10, 8), seed=9), np.diag([-3.0, -3.0, 3.0, 1.0]))
    os.utime(src, ns=(first["case1.json"] + 10**9, first["case1.json"] + 10**9))
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    now = _mtimes(out)
    assert now["case0.npy"] == first["case0.npy"] and now["case1.npy"] != first["case1.npy"]

    # a new plan recomputes every case, and the cache reads as the new plan
    plan = Plan(spacing=(2.0, 2.0, 2.0), window=(-500.0, 500.0))
    cache = preprocess_dataset(dataset, out, plan, workers=0, progress=False)
    assert cache.plan == plan and len(cache.cases) == 3
    assert cache.case("case0").record.spacing == pytest.approx((2.0, 2.0, 2.0), abs=0.1)
    assert all(_mtimes(out)[f"case{i}.json"] != now[f"case{i}.json"] for i in range(3))


def test_interrupted_case_is_not_listed_and_is_redone(dataset, tmp_path, monkeypatch):
    out = tmp_path / "c"
    real = cache_process._atomic_npy
    calls = []

    def dying(path, array):
        calls.append(path.name)
        if path.name == "case1_seg.npy":
            # simulate a crash in the middle of writing: a temporary file left behind
            path.with_name(f".{path.name}.tmp-999").write_bytes(b"partial")
            raise KeyboardInterrupt
        real(path, array)

    monkeypatch.setattr(cache_process, "_atomic_npy", dying)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    assert Cache.open(out).cases == ["case0"]  # case1 has its image but no metadata: not a case
    assert (out / "cases" / "case1.npy").exists() and not (out / "cases" / "case1.json").exists()

    monkeypatch.setattr(cache_process, "_atomic_npy", real)
    cache = preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    assert cache.cases == ["case0", "case1", "case2"]
    assert not list((out / "cases").glob(".*tmp*"))  # leftovers cleaned


def test_bad_case_stops_with_its_name_and_writes_nothing_for_it(dataset, tmp_path, nii):
    bad = dataset / "labelsTr" / "case2.nii.gz"
    nii.write(bad, np.full((14, 10, 8), 0.5, np.float32), np.diag([2.0, 3.0, 4.0, 1.0]))
    out = tmp_path / "c"
    with pytest.raises(InputError, match=r"case2\.nii\.gz: label map has .* non-integer"):
        preprocess_dataset(dataset, out, Plan(), workers=2, progress=False)
    assert not (out / "cases" / "case2.json").exists() and not (out / "cases" / "case2.npy").exists()
    assert "case2" not in Cache.open(out).cases


def test_open_refuses_non_cache(tmp_path):
    with pytest.raises(InputError, match="not a hiend-data cache"):
        Cache.open(tmp_path)


def test_memmap_reads_only_the_crop(dataset, tmp_path):
    cache = preprocess_dataset(dataset, tmp_path / "c", Plan(), workers=0, progress=False)
    img = cache.case("case0").stored  # the default plan's uint8 codes
    assert (
        img.dtype == np.uint8
        and isinstance(img, np.memmap)
        and img.offset > 0
        and str(img.filename).endswith("case0.npy")
    )
    crop = np.ascontiguousarray(img[:, 2:6, 3:7, 1:5])
    assert crop.shape == (1, 4, 4, 4) and not isinstance(crop, np.memmap)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_goes_on(dataset, tmp_path, nii, capsys, workers):
    nii.write(
        dataset / "labelsTr" / "case1.nii.gz",
        np.full((13, 10, 8), -1, np.int16),
        np.diag([-3.0, -3.0, 3.0, 1.0]),
    )
    cache = preprocess_dataset(
        dataset, tmp_path / "c", Plan(), workers=workers, progress=False, skip_bad=True
    )
    assert cache.cases == ["case0", "case2"]
    assert "case1.nii.gz: label map has negative values" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ label names


def test_label_names_from_the_dataset_json(dataset, tmp_path):
    out = tmp_path / "cache"
    cache = preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    assert json.loads((out / "labels.json").read_text()) == {"labels": {"1": "tissue", "2": "bone"}}
    assert cache.label_names == {1: "tissue", 2: "bone"}
    assert Cache.open(out).label_names == {1: "tissue", 2: "bone"}
    # not part of the plan: the plan (and its digest, which marks cases current) is as it was
    assert "labels" not in json.loads((out / "plan.json").read_text())
    assert cache.plan.digest() == Plan().digest()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_label_names_given_override_and_reruns_keep_cases(dataset, tmp_path):
    out = tmp_path / "cache"
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    before = _mtimes(out)
    cache = preprocess_dataset(
        dataset, out, Plan(), workers=0, progress=False, labels={0: "bg", 2: "cortical bone", 1: "soft"}
    )
    assert cache.label_names == {1: "soft", 2: "cortical bone"} and list(cache.label_names) == [1, 2]
    assert _mtimes(out) == before  # new names, same plan: no case is recomputed
    assert json.loads((out / "labels.json").read_text())["labels"] == {"1": "soft", "2": "cortical bone"}
    with pytest.raises(InputError, match="labels: label value -1 is not an integer >= 0"):
        preprocess_dataset(dataset, out, Plan(), workers=0, progress=False, labels={-1: "x"})
    with pytest.raises(InputError, match="labels: label 1 has name ''"):
        preprocess_dataset(dataset, out, Plan(), workers=0, progress=False, labels={1: ""})
    with pytest.raises(InputError, match="only background"):
        preprocess_dataset(dataset, out, Plan(), workers=0, progress=False, labels={0: "bg"})


def test_no_label_names_without_a_usable_dataset_json(dataset, tmp_path, nii, capsys):
    pool = tmp_path / "pool"  # a plain folder: nothing names the labels
    nii.write(pool / "s1.nii.gz", nii.tiny_ct(), np.diag([3.0, 3.0, 3.0, 1.0]))
    cache = preprocess_dataset(pool, tmp_path / "c1", Plan(), workers=0, progress=False)
    assert cache.label_names is None and not (tmp_path / "c1" / "labels.json").exists()
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "tissue": 1, "tissue_or_bone": [1, 2]}  # region-based: no names
    (dataset / "dataset.json").write_text(json.dumps(meta))
    cache = preprocess_dataset(dataset, tmp_path / "c2", Plan(), workers=0, progress=False)
    assert len(cache.cases) == 3 and cache.label_names is None
    assert not (tmp_path / "c2" / "labels.json").exists()
    err = capsys.readouterr().err
    assert "warning:" in err and "region-based labels are not supported" in err and "no label names" in err
    del meta["labels"]  # no labels map at all: nothing to say
    (dataset / "dataset.json").write_text(json.dumps(meta))
    assert preprocess_dataset(dataset, tmp_path / "c3", Plan(), workers=0, progress=False).label_names is None
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"labels": {"0": "background"}}', "label key '0'"),
        ('{"labels": {"1": 7}}', "label 1 has name 7"),
        ('{"names": {}}', "label names must be an object"),
    ],
)
def test_corrupt_labels_json_names_it(dataset, tmp_path, content, what):
    out = tmp_path / "cache"
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    (out / "labels.json").write_text(content)
    with pytest.raises(InputError) as err:
        Cache.open(out)
    assert str(err.value).startswith(str(out / "labels.json")) and what in str(err.value)


# ----------------------------------------------------------------------- reading trusts nothing (issue 18)


def _edit(path, **fields):
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"format": 1}, "image_dtype 'uint8': expected float32 (format 1)"),
        ({"image_dtype": None}, "image_dtype: missing (format 2 records it)"),
        ({"image_scale": None}, "image_scale None does not decode uint8"),
        ({"image_scale": "0.5"}, "image_scale: Input should be a valid number"),
        ({"channels": 2}, "disagrees with record"),
        ({"label_dtype": "int32"}, "label_dtype does not match case1_seg.npy, which holds uint8"),
        ({"classes": [2, 1]}, "classes / class_counts / class_offsets disagree"),
        ({"labelled": False}, "classes [1, 2] in a case that is not labelled"),
        ({"record": {"source": None}}, "record.original_shape: Field required"),
        ({"n_foreground": -1}, "n_foreground: Input should be greater than or equal to 0"),
    ],
)
def test_open_checks_each_case_file_naming_it_and_the_field(dataset, tmp_path, fields, what):
    out = tmp_path / "c"
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    path = out / "cases" / "case1.json"
    _edit(path, **fields)
    with pytest.raises(InputError) as err:
        Cache.open(out)
    assert str(err.value).startswith(f"{path}: ") and what in str(err.value), str(err.value)


def test_open_skips_other_plans_and_a_rerun_repairs_a_broken_case_file(dataset, tmp_path):
    out = tmp_path / "c"
    preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    _edit(out / "cases" / "case0.json", plan_digest="another plan", image_scale="not checked")
    (out / "cases" / "case1.json").write_text("[1]")
    (out / "cases" / ".case2.json.abc.tmp.json").write_text("{half")  # a temporary: ignored
    with pytest.raises(InputError, match=r"case1\.json: expected a JSON object"):
        Cache.open(out)
    cache = preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)  # recomputes both
    assert cache.cases == ["case0", "case1", "case2"]


def test_an_array_file_of_another_dtype_or_shape_is_refused(dataset, tmp_path):
    out = tmp_path / "c"
    cache = preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    fg = out / "cases" / "case2_fg.npy"
    np.save(fg, cache.case("case2").foreground.astype(np.int32))
    with pytest.raises(
        InputError, match=r"case2\.json: n_foreground does not match case2_fg\.npy, which holds int32"
    ):
        Cache.open(out)
    np.save(fg, np.zeros((2, 2), np.int64))
    with pytest.raises(InputError, match=r"which holds int64 \[2, 2\] \(expected int64 of one axis\)"):
        Cache.open(out)
    fg.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"case2_fg\.npy: not a valid \.npy file"):
        Cache.open(out)
    fg.unlink()
    with pytest.raises(InputError, match=r"case2\.json: n_foreground: its array case2_fg\.npy is missing"):
        Cache.open(out)


def test_sigterm_mid_case_removes_temporaries_and_raises_terminated(dataset, tmp_path, monkeypatch):
    import signal

    out = tmp_path / "c"
    real = cache_process._atomic_npy

    def terminated_mid_write(path, array):
        if path.name == "case1_seg.npy":
            with cache_process.atomic_open(path, "wb") as fh:
                fh.write(b"half of it")
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here
        real(path, array)

    monkeypatch.setattr(cache_process, "_atomic_npy", terminated_mid_write)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cache_mod.Terminated) as err:
        preprocess_dataset(dataset, out, Plan(), workers=0, progress=False)
    assert err.value.code == 143 and signal.getsignal(signal.SIGTERM) is before
    assert not [p.name for p in (out / "cases").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(cache_process, "_atomic_npy", real)
    assert preprocess_dataset(dataset, out, Plan(), workers=0, progress=False).cases == [
        "case0",
        "case1",
        "case2",
    ]
