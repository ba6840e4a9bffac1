"""Dataset discovery (nnU-Net v2, folders, manifests) and seeded splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiend_data import InputError
from hiend_data.discovery import Case, collect_cases, discover, kfold, split


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _dicom_file(path):
    """A file with the DICOM marker (128-byte preamble, ``DICM``): enough for discovery, which reads
    nothing else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return path


def _nnunet(root, cases=("a", "b"), channels=2, test=("t1",), ending=".nii.gz", extra=None):
    meta = {
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, "x": 1},
        "numTraining": len(cases),
        "file_ending": ending,
        **(extra or {}),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for cid in cases:
        for c in range(channels):
            _touch(root / "imagesTr" / f"{cid}_{c:04d}{ending}")
        _touch(root / "labelsTr" / f"{cid}{ending}")
    for cid in test:
        for c in range(channels):
            _touch(root / "imagesTs" / f"{cid}_{c:04d}{ending}")
    return root


def test_nnunet_v2_layout(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_X")
    cases = discover(root)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [p.name for p in cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert cases[1].label == root / "labelsTr" / "b.nii.gz"
    with_test = discover(root, include_test=True)
    assert [(c.case_id, c.label is None) for c in with_test] == [("a", False), ("b", False), ("t1", True)]


def test_nnunet_without_labels_is_an_unlabelled_pool(tmp_path):
    root = _nnunet(tmp_path / "D", test=())
    for f in (root / "labelsTr").iterdir():
        f.unlink()
    (root / "labelsTr").rmdir()
    assert [(c.case_id, c.label) for c in discover(root)] == [("a", None), ("b", None)]


def test_nnunet_layout_without_dataset_json(tmp_path):
    root = _nnunet(tmp_path / "D")
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match="has no dataset.json"):
        discover(root)


def test_nnunet_file_ending_nii(tmp_path):
    root = _nnunet(tmp_path / "D", ending=".nii", channels=1, test=())
    assert [c.images[0].name for c in discover(root)] == ["a_0000.nii", "b_0000.nii"]


def test_nnunet_missing_label(tmp_path):
    root = _nnunet(tmp_path / "D")
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(InputError, match=r"b\.nii\.gz: label file missing"):
        discover(root)


def test_nnunet_missing_channel(tmp_path):
    root = _nnunet(tmp_path / "D")
    (root / "imagesTr" / "a_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="case 'a' has channels \\[0\\]"):
        discover(root)


def test_dataset_json_not_json(tmp_path):
    root = _nnunet(tmp_path / "D")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"dataset\.json: not valid JSON"):
        discover(root)


@pytest.mark.parametrize(
    "entry",
    [
        {"dataset": {"a": {"images": ["../outside/a.nii.gz"], "label": "labelsTr/a.nii.gz"}}},
        {"dataset": {"a": {"images": ["imagesTr/a_0000.nii.gz"], "label": "/etc/passwd.nii.gz"}}},
        {"training": [{"image": "./imagesTr/../../a.nii.gz", "label": "./labelsTr/a.nii.gz"}]},
    ],
)
def test_dataset_json_pointing_outside(tmp_path, entry):
    root = _nnunet(tmp_path / "D", extra=entry)
    with pytest.raises(InputError, match="points outside the dataset folder"):
        discover(root)


def test_dataset_json_explicit_mapping(tmp_path):
    root = _nnunet(
        tmp_path / "D",
        channels=1,
        extra={"dataset": {"x": {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}}},
    )
    (case,) = discover(root)
    assert case == Case(
        "x", [(root / "imagesTr/a_0000.nii.gz").resolve()], (root / "labelsTr/a.nii.gz").resolve()
    )


def test_folder_recursive_with_channels_and_collisions(tmp_path):
    _touch(tmp_path / "siteA" / "ct.nii.gz")
    _touch(tmp_path / "siteB" / "ct.nii.gz")
    _touch(tmp_path / "siteB" / "deep" / "scan.nii")
    _touch(tmp_path / "mr" / "p1_0000.nii.gz")
    _touch(tmp_path / "mr" / "p1_0001.nii.gz")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".trash" / "old.nii.gz")
    cases = discover(tmp_path)
    ids = {c.case_id: c for c in cases}
    assert set(ids) == {"siteA__ct", "siteB__ct", "scan", "p1"}
    assert [p.name for p in ids["p1"].images] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]
    assert all(c.label is None for c in cases)


def test_label_maps_beside_their_scans_are_not_taken_as_scans(tmp_path, capsys):
    """A folder such as ../shared/data/ct (``x.nii.gz`` + ``x_seg.nii.gz``): preprocess took the label
    map as one more CT case."""
    for name in ("a.nii.gz", "a_seg.nii.gz", "b.nii", "b_Label.nii", "c_mask.nii.gz", "seg.nii.gz"):
        _touch(tmp_path / name)
    cases = discover(tmp_path)
    assert sorted(c.case_id for c in cases) == ["a", "b", "seg"]  # a name that only is "seg" stays a scan
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "left out 3 label map(s) by name" in err[0] and "a_seg.nii.gz" in err[0]
    assert sorted(c.name for c in collect_cases([tmp_path])) == ["a", "b", "seg"]  # predict: the same rule


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no NIfTI cases"):
        discover(tmp_path)


@pytest.mark.parametrize("sep", [",", "\t"])
def test_manifest(tmp_path, sep):
    img1, lab1 = _touch(tmp_path / "d1" / "img.nii.gz"), _touch(tmp_path / "d1" / "seg.nii.gz")
    img2 = _touch(tmp_path / "d2" / "img.nii.gz")
    man = tmp_path / "pool.txt"
    man.write_text(f"# pool\n\nd1/img.nii.gz{sep}d1/seg.nii.gz\n d2/img.nii.gz \n")
    cases = discover(man)
    assert [(c.case_id, c.images, c.label) for c in cases] == [
        ("d1__img", [img1], lab1),
        ("d2__img", [img2], None),
    ]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("missing.nii.gz", "missing.nii.gz does not exist"),
        ("a.nii.gz,b.nii.gz,c.nii.gz", "expected 'image\\[,label\\]'"),
        ("a.txt", "not a NIfTI file name"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path, line, match):
    man = tmp_path / "m.csv"
    man.write_text(f"# header\n{line}\n")
    with pytest.raises(InputError, match=rf"m\.csv:2: .*{match}"):
        discover(man)


def _cases(n):
    return [Case(f"c{i:03d}", []) for i in range(n)]


def test_split_is_seeded_disjoint_and_order_free():
    cases = _cases(23)
    tr, va = split(cases, 0.2, seed=3)
    assert len(va) == 5 and len(tr) == 18
    assert {c.case_id for c in tr}.isdisjoint({c.case_id for c in va})
    tr2, va2 = split(list(reversed(cases)), 0.2, seed=3)
    assert (tr2, va2) == (tr, va)
    assert split(cases, 0.2, seed=4)[1] != va
    assert len(split(_cases(2), 0.1)[1]) == 1  # at least one validation case


def test_kfold_partitions():
    cases = _cases(11)
    folds = kfold(cases, k=3, seed=0)
    vals = [c.case_id for _, va in folds for c in va]
    assert sorted(vals) == [c.case_id for c in cases]
    assert sorted(len(va) for _, va in folds) == [3, 4, 4]
    for tr, va in folds:
        assert len(tr) + len(va) == 11 and not set(map(id, tr)) & set(map(id, va))
    assert kfold(cases, 3, seed=0) == folds
    with pytest.raises(InputError):
        kfold(cases, k=12)


def test_split_uses_numpy_seed_only():
    # same ids and seed -> same split on any machine: it is a permutation from default_rng(seed)
    perm = np.random.default_rng(7).permutation(10)
    _, va = split(_cases(10), 0.3, seed=7)
    assert sorted(c.case_id for c in va) == sorted(f"c{i:03d}" for i in perm[:3])


# ------------------------------------------------------------------ scans named on a command line


def test_collect_cases_groups_channels(tmp_path):
    d = tmp_path / "in"
    for name in ["b.nii", "a.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz", "d_0001.nii.gz", "notes.txt",
                 "sub/e.nii.gz", ".hidden.nii.gz"]:  # fmt: skip
        _touch(d / name)
    extra = _touch(tmp_path / "f_0000.nii.gz")
    cases = collect_cases([d, extra, d / "a.nii.gz", d / "c_0001.nii.gz"])  # named twice: counted once
    assert [(c.name, [f.name for f in c.files]) for c in cases] == [
        ("a", ["a.nii.gz"]),
        ("b", ["b.nii"]),
        ("c", ["c_0000.nii.gz", "c_0001.nii.gz"]),
        ("d_0001", ["d_0001.nii.gz"]),
        ("f", ["f_0000.nii.gz"]),
    ]


@pytest.mark.parametrize(
    ("names", "args", "match"),
    [
        (
            ["x_0000.nii.gz", "x_0002.nii.gz"],
            ["."],
            r"x_0001.nii.gz: channel file missing; case 'x' has channels _0000, _0002",
        ),
        (["p/a.nii.gz", "q/a.nii.gz"], ["p", "q"], r"both be written as a.nii.gz"),
        (["a.nii.gz", "a_0000.nii.gz"], ["."], r"both be written as a.nii.gz"),
        (
            ["scan.nrrd"],
            ["scan.nrrd"],
            r"scan.nrrd: not a NIfTI file name .* nor a DICOM series .*: no reader",
        ),
        (["notes.txt"], ["."], r"folder holds no .nii/.nii.gz files and no DICOM series$"),
        ([], ["missing.nii.gz"], r"missing.nii.gz: no such file or folder"),
        ([], [], r"no input scans"),
    ],
)
def test_collect_cases_errors(tmp_path, names, args, match):
    for n in names:
        _touch(tmp_path / n)
    with pytest.raises(InputError, match=match):
        collect_cases([tmp_path / a for a in args])


def test_a_folder_of_nifti_and_a_dicom_series_gives_both_to_predict_and_discovery(tmp_path):
    """One rule (folder_scans): predict used to read such a folder's NIfTI files only, discovery both."""
    root = tmp_path / "mixed"
    _touch(root / "a.nii.gz")
    _touch(root / "b_0000.nii.gz")
    _touch(root / "b_0001.nii.gz")
    _dicom_file(root / "patient1" / "CT" / "1.2.3.4")
    _dicom_file(root / "patient2" / "CT" / "IM0001.dcm")
    _touch(root / "sub" / "c.nii.gz")  # below the folder: discovery's, not predict's
    assert [(c.name, len(c.files)) for c in collect_cases([root])] == [
        ("a", 1),
        ("b", 2),
        ("patient1__CT", 1),
        ("patient2__CT", 1),
    ]
    cases = discover(root)
    assert [c.case_id for c in cases] == ["a", "b", "c", "patient1__CT", "patient2__CT"]
    assert cases[3].images == [root / "patient1" / "CT"]


def test_two_files_of_one_folder_naming_one_case_are_both_named(tmp_path):
    _touch(tmp_path / "x.nii.gz")
    _touch(tmp_path / "x_0000.nii.gz")
    with pytest.raises(InputError, match=r"x_0000.nii.gz and .*x.nii.gz: both give case id 'x'"):
        discover(tmp_path)
