"""Hostile input (issue 11): case names from untrusted text never become paths outside their folder.

Each command case runs the real command line in a subprocess and asserts exit 2, one line on stderr
that names the file, no traceback, and nothing written outside (or half-written inside) the output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostile_cli import one_line_exit_2, run

from hiend_data.errors import InputError
from hiend_data.naming import check_unique, path_inside, safe_case_name
from hiend_data.phantom import make_phantom_dataset


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../ESCAPED_A", "starts with '.'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("/etc/passwd", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("C:evil", "absolute path"),
        ("x\x00y", "control character"),
        ("x\ny", "control character"),
        ("x\x85y", "control character"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("a" * 201, "longer than 200"),
    ],
)
def test_unsafe_names_are_refused_naming_the_source(name, why):
    with pytest.raises(InputError, match=rf"^ds/dataset.json: case name .* {why}"):
        safe_case_name(name, "ds/dataset.json")


def test_safe_names_pass_and_collisions_are_refused(tmp_path):
    for name in ("case_001", "liver 3", "ß-é_x.y", "a" * 200, "x..y"):
        assert safe_case_name(name) == name
    check_unique(["a", "b", "A_1"])
    with pytest.raises(InputError, match=r"'Liver' and 'liver' differ only"):
        check_unique(["Liver", "liver"], "m.csv")
    with pytest.raises(InputError, match=r"differ only in letter case or Unicode form"):
        check_unique(["caf\u00e9", "cafe\u0301"])  # NFC vs NFD
    # a symlinked entry that leads out of the folder is caught on resolution
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "evil.npy").symlink_to(tmp_path / "elsewhere" / "target.npy")
    assert path_inside(tmp_path / "out", "fine", ".npy") == tmp_path / "out" / "fine.npy"
    with pytest.raises(InputError, match=r"evil.npy: resolves to .*outside"):
        path_inside(tmp_path / "out", "evil", ".npy")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "raw"
    make_phantom_dataset(root, cases=2, seed=7)
    return root


def _mapping_dataset(phantom: Path, root: Path, cid: str) -> Path:
    """An nnU-Net v2 dataset with the explicit ``dataset`` mapping whose one case is called ``cid``."""
    ds = root / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    src = sorted((phantom / "imagesTr").iterdir())[0]
    (ds / "imagesTr" / "a_0000.nii.gz").write_bytes(src.read_bytes())
    (ds / "labelsTr" / "a.nii.gz").write_bytes(
        (phantom / "labelsTr" / src.name.replace("_0000", "")).read_bytes()
    )
    meta = json.loads((phantom / "dataset.json").read_text())
    meta["dataset"] = {cid: {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}}
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds


@pytest.mark.parametrize("cid", ["../../ESCAPED_A", "/tmp/ESCAPED_ABS", "sub/ESCAPED_B", ".ESCAPED_DOT", ""])
def test_preprocess_refuses_a_dataset_json_case_name_that_escapes(phantom, tmp_path, cid):
    ds = _mapping_dataset(phantom, tmp_path / "w", cid)
    before = tree(tmp_path)
    out = tmp_path / "w" / "out" / "cache"
    proc = run("hiend-data", "preprocess", ds, out, "--spacing", "4")
    one_line_exit_2(proc, "dataset.json", "case name", repr(cid))
    assert tree(tmp_path) == before  # nothing written anywhere: not the cache, not above it
    assert not list(Path("/tmp").glob("ESCAPED_ABS*"))


def test_nnunet_layout_refuses_a_symlink_out_of_the_dataset(phantom, tmp_path):
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    (ds / "dataset.json").write_text((phantom / "dataset.json").read_text())
    outside = tmp_path / "outside_0000.nii.gz"
    outside.write_bytes(sorted((phantom / "imagesTr").iterdir())[0].read_bytes())
    (ds / "imagesTr" / "x_0000.nii.gz").symlink_to(outside)
    (ds / "labelsTr" / "x.nii.gz").write_bytes(sorted((phantom / "labelsTr").iterdir())[0].read_bytes())
    proc = run("hiend-data", "preprocess", ds, tmp_path / "cache", "--spacing", "4")
    one_line_exit_2(proc, "dataset.json", "imagesTr/x_0000.nii.gz", "points outside the dataset folder")
    assert not (tmp_path / "cache").exists()


def test_manifest_case_names_that_collide_by_case_are_refused(phantom, tmp_path):
    img = sorted((phantom / "imagesTr").iterdir())
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "Liver.nii.gz").write_bytes(img[0].read_bytes())
    (tmp_path / "p" / "liver.nii.gz").write_bytes(img[1].read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("p/Liver.nii.gz\np/liver.nii.gz\n")
    proc = run("hiend-data", "preprocess", manifest, tmp_path / "cache", "--spacing", "4")
    one_line_exit_2(proc, "m.csv", "'Liver' and 'liver' differ only")
    assert not (tmp_path / "cache").exists()
    assert sorted(os.listdir(tmp_path)) == ["m.csv", "p"]  # nothing else was made
