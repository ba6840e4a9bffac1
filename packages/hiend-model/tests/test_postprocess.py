"""Connected-component clean-up of predicted label maps (predict --keep-largest / --min-component)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hiend_data import load_volume
from hiend_data.errors import InputError
from hiend_model.postprocess import (
    check_min_component,
    clean_components,
    keep_largest_classes,
    label_values,
    parse_keep_largest,
)
from hiend_model.predict import predict_files

BODY = "ct/body_ct_3mm_ras_30slices.nii.gz"


def _map() -> np.ndarray:
    lab = np.zeros((20, 20, 20), dtype=np.uint8)
    lab[1:4, 1:4, 1:4] = 1  # 27 voxels
    lab[10:12, 10:12, 10:12] = 1  # 8 voxels, another island
    lab[5, 5, 5] = 1  # touches nothing
    lab[12, 12, 12] = 1  # touches the 8-voxel island only at a corner: another component (6-connected)
    lab[14:19, 1:5, 1:6] = 2  # 100 voxels
    lab[1, 15, 15] = 2  # 1 voxel: 1 % of the largest
    lab[1:5, 15:18, 1:2] = 2  # 12 voxels: 12 %
    lab[16:19, 16:19, 16:19] = 3  # untouched unless asked
    lab[16, 1, 18] = 3
    return lab


def test_keep_largest_and_min_fraction() -> None:
    lab = _map()
    out = clean_components(lab, keep_largest=[1], min_fraction=0.1)
    assert (out == 1).sum() == 27 and out[11, 11, 11] == 0 and out[5, 5, 5] == 0
    assert (out == 2).sum() == 112 and out[1, 15, 15] == 0  # the 12 % piece stays, the 1 % one goes
    assert (out == 3).sum() == 27  # the lone voxel (1 / 27 < 10 %) dropped
    assert lab[5, 5, 5] == 1  # the input is not modified
    kept = clean_components(lab, keep_largest=[1])  # min_fraction 0: other labels untouched
    np.testing.assert_array_equal(kept[lab != 1], lab[lab != 1])
    corner = clean_components(np.where(lab == 1, lab, 0), min_fraction=0.25)
    assert corner[12, 12, 12] == 0 and corner[11, 11, 11] == 1  # 8 voxels >= 25 % of 27; the corner voxel not
    np.testing.assert_array_equal(clean_components(lab), lab)
    with pytest.raises(ValueError, match="min_fraction"):
        clean_components(lab, min_fraction=1.5)


def test_parse_keep_largest() -> None:
    assert parse_keep_largest("", 7) == [] and parse_keep_largest("all", 4) == [1, 2, 3]
    assert parse_keep_largest("1, 4", 7) == [1, 4]
    with pytest.raises(ValueError, match="--keep-largest 7: not a class of the model"):
        parse_keep_largest("1,7", 7)
    with pytest.raises(ValueError, match="'x' is not a label value"):
        parse_keep_largest("1,x", 7)


def test_label_values_then_the_classes_check() -> None:
    assert label_values("1, 4") == [1, 4] and label_values(" all ") == "all" and label_values("") == []
    with pytest.raises(ValueError, match=r"^--keep-largest '1,x': 'x' is not a label value$"):
        label_values("1,x")
    assert keep_largest_classes([1, 4], 7) == [1, 4] and keep_largest_classes("all", 3) == [1, 2]
    assert keep_largest_classes(np.array([2], dtype=np.int64), 3) == [2]
    with pytest.raises(ValueError, match=r"^--keep-largest 0: not a class of the model \(1..6\)$"):
        keep_largest_classes([0], 7)
    with pytest.raises(ValueError, match=r"^--keep-largest 1.5: not a label value$"):
        keep_largest_classes([1.5], 7)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (float("nan"), r"^--min-component nan:"),
        (1.5, r"^--min-component 1.5:"),
        (-0.5, r"^--min-component -0.5:"),
    ],
)
def test_min_component_out_of_range_is_refused(value, match) -> None:
    with pytest.raises(InputError, match=match):
        check_min_component(value)


def test_min_component_edges_are_accepted() -> None:
    check_min_component(0.0)
    check_min_component(1.0)


def test_predict_cleans_components_and_refuses_bad_values(
    tmp_path: Path, shared_data: Path, unetr_ckpt: Path
):
    os.symlink(shared_data / BODY, tmp_path / "scan.nii.gz")
    plain = predict_files(unetr_ckpt, [tmp_path / "scan.nii.gz"], tmp_path / "plain", progress=False)[0]
    clean = predict_files(
        unetr_ckpt, [tmp_path / "scan.nii.gz"], tmp_path / "clean", progress=False, keep_largest="all"
    )[0]
    a, b = load_volume(plain).array, load_volume(clean).array
    np.testing.assert_array_equal(b, clean_components(a, keep_largest=range(1, int(a.max()) + 1)))
    for kwargs, match in (
        ({"keep_largest": "99"}, "not a class"),
        ({"min_component": 2.0}, "--min-component"),
    ):
        with pytest.raises(InputError, match=match):
            predict_files(unetr_ckpt, [tmp_path / "scan.nii.gz"], tmp_path / "bad", progress=False, **kwargs)
        assert not (tmp_path / "bad").exists()


def test_cli_refuses_bad_clean_up_values_with_one_line(tmp_path: Path, shared_data: Path, unetr_ckpt: Path):
    from typer.testing import CliRunner

    from hiend_model.cli import app

    for args, needle in (
        (["--keep-largest", "1,99"], "--keep-largest 99: not a class of the model"),
        (["--min-component", "-0.5"], "--min-component -0.5: expected a fraction in [0, 1]"),
    ):
        out = tmp_path / "out"
        r = CliRunner().invoke(
            app, ["predict", str(unetr_ckpt), str(shared_data / BODY), "--out", str(out), *args]
        )
        assert r.exit_code == 2 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not out.exists()
