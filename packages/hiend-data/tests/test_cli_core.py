"""`hiend-data inspect` and `hiend-data preprocess`: outputs, exit codes, one-line errors, fast help."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from hiend_data.cache import Cache
from hiend_data.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_inspect_json_real_scan(ct_dir):
    res = _run("inspect", ct_dir / "abdomen_ct_1.5mm_lps.nii.gz", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["spacing"] == [1.5, 1.5, 1.5] and info["shape"] == [120, 126, 164]
    assert info["orientation"] == "LPS" and info["dtype"] == "int16"
    assert (info["min"], info["max"]) == (-1078.0, 3343.0)


def test_inspect_label_values(ct_dir):
    res = _run("inspect", ct_dir / "body_ct_3mm_ras_30slices_seg.nii.gz", "--json")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["label_values"][:4] == [0, 1, 2, 3] and info["label_values"][-1] == 117
    assert len(info["label_values"]) == 42  # background + 41 structures
    text = _run("inspect", ct_dir / "body_ct_3mm_ras_30slices_seg.nii.gz")
    assert text.exit_code == 0 and "3 x 3 x 3 mm" in text.stdout and "RAS" in text.stdout
    values = [line for line in text.stdout.splitlines() if line.strip().startswith("values")]
    assert values == ["  values       [" + ", ".join(map(str, info["label_values"])) + "]"]  # once


def test_inspect_refuses_nan_saying_how_many(tmp_path, nii):
    arr = np.zeros((5, 5, 5), np.float32)
    arr[0, 0, :4] = np.nan
    path = nii.write(tmp_path / "nan.nii.gz", arr)
    res = _run("inspect", path, "--json")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {path}: 4 non-finite voxels (4 NaN, 0 infinite) out of 125"
    ]


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_inspect_bad_file_one_line_exit_2(tmp_path, content):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(content)
    res = _run("inspect", path)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert str(path) in res.stderr and "Traceback" not in res.stderr


def test_preprocess_command(tmp_path, nii):
    src = tmp_path / "pool"
    nii.write(src / "s1.nii.gz", nii.tiny_ct(), np.diag([3.0, 3.0, 3.0, 1.0]))
    nii.write(src / "sub" / "s2.nii.gz", nii.tiny_ct(seed=1), np.diag([-3.0, 3.0, 3.0, 1.0]))
    out = tmp_path / "cache"
    res = _run(
        "preprocess", src, out, "--spacing", "2", "--window", "-100", "300", "--workers", "0", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    cache = Cache.open(out)
    assert cache.cases == ["s1", "s2"]
    assert cache.plan.spacing == (2.0, 2.0, 2.0) and cache.plan.window == (-100.0, 300.0)


def test_preprocess_takes_the_cache_as_out_or_as_its_option_once(tmp_path, nii):
    src = tmp_path / "pool"
    nii.write(src / "s1.nii.gz", nii.tiny_ct(), np.diag([3.0, 3.0, 3.0, 1.0]))
    res = _run("preprocess", src, "--out", tmp_path / "c", "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert Cache.open(tmp_path / "c").cases == ["s1"]
    for args, fragment in (((), "as OUT or as --out"), ((tmp_path / "a", "--out", tmp_path / "b"), "got")):
        res = _run("preprocess", src, *args)
        assert res.exit_code == 2 and fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--spacing", "0"], "--spacing '0'"),
        (["--spacing", "a,b"], "--spacing 'a,b'"),
        (["--window", "300", "-100"], "window"),
        (["--modality", "pet"], "--modality 'pet'"),
    ],
)
def test_preprocess_bad_options(tmp_path, nii, args, match):
    nii.write(tmp_path / "src" / "s.nii.gz", nii.tiny_ct())
    res = _run("preprocess", tmp_path / "src", tmp_path / "out", *args)
    assert res.exit_code == 2 and match in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_preprocess_bad_dataset_json(tmp_path):
    root = tmp_path / "Dataset9"
    root.mkdir()
    (root / "dataset.json").write_text("[oops")
    res = _run("preprocess", root, tmp_path / "out")
    assert res.exit_code == 2 and "dataset.json: not valid JSON" in res.stderr
    assert not (tmp_path / "out").exists()


def test_help_imports_nothing_heavy():
    code = (
        "import sys, hiend_data.cli; "
        "print(sorted(m for m in ('numpy', 'scipy', 'nibabel', 'torch', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_preprocess_labels_option_and_inspect(tmp_path, nii):
    src = tmp_path / "pool"
    ct = nii.tiny_ct()
    nii.write(src / "images" / "s1.nii.gz", ct, np.diag([3.0, 3.0, 3.0, 1.0]))
    nii.write(src / "labels" / "s1.nii.gz", nii.tiny_label(ct), np.diag([3.0, 3.0, 3.0, 1.0]))
    (tmp_path / "manifest.txt").write_text(f"{src / 'images' / 's1.nii.gz'},{src / 'labels' / 's1.nii.gz'}\n")
    djson = tmp_path / "dataset.json"
    djson.write_text(json.dumps({"labels": {"0": "background", "1": "tissue", "2": "bone"}}))  # v1 form
    out = tmp_path / "cache"
    res = _run(
        "preprocess", tmp_path / "manifest.txt", out, "--labels", djson, "--workers", "0", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    assert Cache.open(out).label_names == {1: "tissue", 2: "bone"}
    info = json.loads(_run("inspect", out, "--json").stdout.strip().splitlines()[-1])
    assert info["labels"] == {"1": "tissue", "2": "bone"}
    text = _run("inspect", out)
    assert text.exit_code == 0 and "labels       1 tissue, 2 bone" in text.stdout
    djson.write_text(json.dumps({"labels": {"background": 0, "both": [1, 2]}}))
    res = _run("preprocess", tmp_path / "manifest.txt", tmp_path / "c2", "--labels", djson, "--no-progress")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert str(djson) in res.stderr and "region" in res.stderr and not (tmp_path / "c2").exists()


def test_inspect_and_preprocess_print_user_text_escaped(tmp_path, nii):
    src = tmp_path / "pool"
    nii.write(src / "s1.nii.gz", nii.tiny_ct(), np.diag([3.0, 3.0, 3.0, 1.0]))
    out = tmp_path / "c\x1b]0;title\x07ache"
    res = _run("preprocess", src, out, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.stdout and "c\\x1b]0;title\\x07ache" in res.stdout
    (out / "labels.json").write_text(json.dumps({"labels": {"1": "[/bold] ok", "2": "a[@click=(]b"}}))
    text = _run("inspect", out)
    assert text.exit_code == 0, text.output
    assert "\x1b" not in text.stdout and "\x07" not in text.stdout
    assert text.stdout.splitlines()[0].startswith(f"{tmp_path}/c\\x1b]0;title\\x07ache (cache, plan")
    assert "labels       1 [/bold] ok, 2 a[@click=(]b" in text.stdout
    info = json.loads(_run("inspect", out, "--json").stdout.strip().splitlines()[-1])
    assert info["path"] == str(out)  # --json: JSON's own escaping, the text as it is
