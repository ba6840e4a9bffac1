"""Case naming (hiend_data.naming): the one rule, and that load_volume's channel lookup and discovery follow it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hiend_data import InputError, load_volume
from hiend_data.discovery import discover
from hiend_data.naming import (
    ChannelGroup,
    case_name,
    channel_siblings,
    group_channels,
    split_channel,
    strip_suffix,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# ------------------------------------------------------------------------------------------ by name


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("ct_0000.nii.gz", "ct_0000"),
        ("ct.nii", "ct"),
        ("a.b.nii.gz", "a.b"),
        ("dir/sub/x.nii.gz", "x"),
        (Path("dir") / "y.nii", "y"),
        ("x.gz", None),
        ("x.txt", None),
        ("x.nii.gz.bak", None),
        (".nii.gz", None),
        ("X.NII.GZ", None),
    ],
)
def test_strip_suffix(name, stem):
    assert strip_suffix(name) == stem


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("liver_003_0000.nii.gz", "liver_003"),
        ("liver_003.nii.gz", "liver_003"),
        ("x_0000.nii", "x"),
        ("x_0001.nii.gz", "x_0001"),  # channel 1 names a case only beside its _0000
        ("x_000.nii.gz", "x_000"),
        ("x_00000.nii.gz", "x_00000"),
        ("dir/p_0000.nii.gz", "p"),
        ("notes.txt", None),
        ("x_0000.gz", None),
    ],
)
def test_case_name(name, case):
    assert case_name(name) == case


@pytest.mark.parametrize(
    ("stem", "split"),
    [
        ("ct_0002", ("ct", 2)),
        ("a_b_0010", ("a_b", 10)),
        ("ct_0000", ("ct", 0)),
        ("ct", None),
        ("ct_12", None),
        ("ct_00001", None),
        ("_0000", None),
    ],
)
def test_split_channel(stem, split):
    assert split_channel(stem) == split


# ------------------------------------------------------------------------------------ of a folder


def test_group_channels_multichannel_in_channel_order():
    d = Path("/data")
    files = [d / "b.nii.gz", d / "a_0002.nii.gz", d / "a_0000.nii.gz", d / "a_0001.nii.gz", d / "c_0000.nii"]
    assert group_channels(files) == [
        ChannelGroup("b", (d / "b.nii.gz",)),
        ChannelGroup("a", (d / "a_0000.nii.gz", d / "a_0001.nii.gz", d / "a_0002.nii.gz")),
        ChannelGroup("c", (d / "c_0000.nii",)),
    ]


def test_group_channels_lone_channel_is_its_own_case():
    d = Path("/data")
    groups = group_channels([d / "x_0001.nii.gz", d / "x_0002.nii.gz", d / "y_0000.nii.gz"])
    assert groups == [
        ChannelGroup("x_0001", (d / "x_0001.nii.gz",)),
        ChannelGroup("x_0002", (d / "x_0002.nii.gz",)),
        ChannelGroup("y", (d / "y_0000.nii.gz",)),
    ]


def test_group_channels_same_case_in_two_folders_is_two_cases():
    files = [Path("/s1/p_0000.nii.gz"), Path("/s2/p_0000.nii.gz"), Path("/s1/p_0001.nii.gz")]
    assert group_channels(files) == [
        ChannelGroup("p", (Path("/s1/p_0000.nii.gz"), Path("/s1/p_0001.nii.gz"))),
        ChannelGroup("p", (Path("/s2/p_0000.nii.gz"),)),
    ]


def test_group_channels_gap_names_the_first_missing_file():
    d = Path("/data")
    with pytest.raises(
        InputError,
        match=r"^/data/x_0001\.nii\.gz: channel file missing; case 'x' has channels "
        r"_0000, _0002, _0003",
    ) as info:
        group_channels([d / "x_0000.nii.gz", d / "x_0002.nii.gz", d / "x_0003.nii.gz"])
    assert "\n" not in str(info.value)


def test_group_channels_nii_and_nii_gz():
    d = Path("/data")
    # one case whatever the ending of each channel; the missing file keeps channel 0's ending
    assert group_channels([d / "m_0000.nii", d / "m_0001.nii.gz"]) == [
        ChannelGroup("m", (d / "m_0000.nii", d / "m_0001.nii.gz"))
    ]
    with pytest.raises(InputError, match=r"/data/m_0001\.nii: channel file missing"):
        group_channels([d / "m_0000.nii", d / "m_0002.nii.gz"])
    with pytest.raises(InputError, match=r"two files for channel 0 of case 'm'"):
        group_channels([d / "m_0000.nii", d / "m_0000.nii.gz"])


@pytest.mark.parametrize("name", ["notes.txt", "scan.nii.gz.bak", "x_0000.gz"])
def test_group_channels_refuses_non_image_names(name):
    with pytest.raises(InputError, match=rf"{re.escape(name)}: not an image file name"):
        group_channels([Path("/data/a.nii.gz"), Path("/data") / name])


def test_channel_siblings(tmp_path):
    for name in ("ct_0000.nii.gz", "ct_0001.nii.gz", "ct_0002.nii.gz", "ct_0005.nii", "other_0000.nii.gz"):
        _touch(tmp_path / name)
    _touch(tmp_path / "ct.nii.gz")
    _touch(tmp_path / "ct_0003.txt")
    assert channel_siblings(tmp_path / "ct_0000.nii.gz") == [
        tmp_path / f"ct_{c:04d}.nii.gz" for c in range(3)
    ]
    assert channel_siblings(tmp_path / "ct_0001.nii.gz") == [tmp_path / "ct_0001.nii.gz"]
    assert channel_siblings(tmp_path / "ct.nii.gz") == [tmp_path / "ct.nii.gz"]
    assert channel_siblings(tmp_path / "other_0000.nii.gz") == [tmp_path / "other_0000.nii.gz"]
    # .nii channels are looked up among .nii files only
    _touch(tmp_path / "ct_0000.nii")
    with pytest.raises(
        InputError, match=r"ct_0001\.nii: channel file missing; case 'ct' has channels _0000, _0005"
    ):
        channel_siblings(tmp_path / "ct_0000.nii")


def test_channel_siblings_gap_names_the_missing_file(tmp_path):
    for c in (0, 2):
        _touch(tmp_path / f"ct_{c:04d}.nii.gz")
    missing = re.escape(str(tmp_path / "ct_0001.nii.gz"))
    with pytest.raises(InputError, match=rf"^{missing}: channel file missing"):
        channel_siblings(tmp_path / "ct_0000.nii.gz")
    with pytest.raises(InputError, match=rf"^{missing}: channel file missing"):
        load_volume(channel_siblings(tmp_path / "ct_0000.nii.gz"))  # load_volume's lookup is the same rule


# ---------------------------------------------------------------------- load_volume and discovery


@pytest.fixture
def real_folder(tmp_path, ct_dir):
    """A folder of the real 30-slice CT as a two-channel case, a one-file case and a lone channel 1."""
    root = tmp_path / "pool"
    root.mkdir()
    slab = ct_dir / "body_ct_3mm_ras_30slices.nii.gz"
    for name in ("body_0000.nii.gz", "body_0001.nii.gz", "plain.nii.gz", "lone_0001.nii.gz"):
        (root / name).symlink_to(slab)
    (root / "sub").mkdir()
    (root / "sub" / "body_0000.nii.gz").symlink_to(slab)
    return root


def test_load_volume_and_discovery_agree_with_naming(real_folder):
    f0 = real_folder / "body_0000.nii.gz"
    files = channel_siblings(f0)
    assert files == [f0, real_folder / "body_0001.nii.gz"]

    cases = {c.case_id: c for c in discover(real_folder)}
    assert set(cases) == {"body", "sub__body", "plain", "lone_0001"}  # _0000 dropped, collisions prefixed
    assert cases["body"].images == files
    groups = group_channels(sorted(p for p in real_folder.rglob("*.nii.gz")))
    assert sorted((g.name, list(g.files)) for g in groups) == sorted(
        (case_name(c.images[0]), c.images) for c in cases.values()
    )

    vol = load_volume(files)
    assert vol.array.shape == (2, 122, 101, 30) and vol.channels == 2
    np.testing.assert_array_equal(vol.array, load_volume(cases["body"].images).array)
    # a single path reads that one file: channel 0 of the case
    one = load_volume(f0)
    assert one.array.shape == (122, 101, 30)
    np.testing.assert_array_equal(one.array, vol.array[0])
    assert load_volume(cases["lone_0001"].images).array.shape == (122, 101, 30)


def test_discovery_refuses_a_gapped_channel_set(real_folder):
    (real_folder / "body_0001.nii.gz").rename(real_folder / "body_0002.nii.gz")  # the link itself
    missing = re.escape(str(real_folder / "body_0001.nii.gz"))
    with pytest.raises(
        InputError, match=rf"^{missing}: channel file missing; case 'body' has channels _0000, _0002"
    ):
        discover(real_folder)
    with pytest.raises(InputError, match=rf"^{missing}: channel file missing"):
        load_volume(channel_siblings(real_folder / "body_0000.nii.gz"))


def test_manifest_and_nnunet_names_follow_the_rule(tmp_path):
    _touch(tmp_path / "d1" / "x_0000.nii.gz")
    _touch(tmp_path / "d2" / "y_0001.nii.gz")
    man = tmp_path / "pool.txt"
    man.write_text("d1/x_0000.nii.gz\nd2/y_0001.nii.gz\n")
    assert [c.case_id for c in discover(man)] == ["x", "y_0001"]

    root = tmp_path / "Dataset001"
    meta = {
        "channel_names": {"0": "a", "1": "b", "2": "c"},
        "labels": {"background": 0},
        "file_ending": ".nii",
    }
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    for c in (0, 2):
        _touch(root / "imagesTr" / f"k_{c:04d}.nii")
    missing = re.escape(str(root / "imagesTr" / "k_0001.nii"))
    with pytest.raises(InputError, match=rf"^{missing}: channel file missing; case 'k'"):
        discover(root)


def test_dicom_case_name_one_rule_for_folders_zips_and_files(tmp_path):
    from hiend_data.naming import dicom_case_name

    (tmp_path / "CT.v2").mkdir()
    assert dicom_case_name(tmp_path / "CT.v2") == "CT.v2"  # a folder keeps its dots
    assert dicom_case_name(tmp_path / "CT.v2" / ".") == "CT.v2"  # "." is the folder itself
    for name, want in [("study.ZIP", "study"), ("enh.dcm", "enh"), ("enh.Dcm", "enh"),
                       ("1.2.840.113619.2.55", "1.2.840.113619.2.55"), (".dcm", ".dcm")]:  # fmt: skip
        (tmp_path / name).write_bytes(b"")
        assert dicom_case_name(tmp_path / name) == want, name


def test_case_names_are_limited_in_utf8_bytes_too():
    from hiend_data.naming import MAX_NAME_BYTES, safe_case_name

    assert MAX_NAME_BYTES == 240
    assert safe_case_name("肝" * 80) == "肝" * 80  # 240 bytes: {case}_0000.nii.gz is 252, legal
    with pytest.raises(InputError, match=r"^m\.csv: case name .* longer than 240 bytes in UTF-8"):
        safe_case_name("肝" * 81, "m.csv")
    with pytest.raises(InputError, match="longer than 200 characters"):
        safe_case_name("a" * 201)


def test_dicom_folders_follow_symlinked_folders_once(tmp_path):
    from hiend_data.naming import dicom_folders, is_dicom_source

    store = tmp_path / "pacs" / "series1"
    store.mkdir(parents=True)
    (store / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    root = tmp_path / "dataset"
    (root / "patient7").mkdir(parents=True)
    (root / "patient7" / "CT").symlink_to(store, target_is_directory=True)
    (root / "patient7" / "loop").symlink_to(root, target_is_directory=True)  # a link to an ancestor
    (root / "broken").symlink_to(tmp_path / "nowhere")
    assert is_dicom_source(root / "patient7")
    assert dicom_folders(root) == [root / "patient7" / "CT"]
