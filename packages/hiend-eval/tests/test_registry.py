"""One definition per metric: a metric added to the registry reaches the scores, the CSV, summary.json and
the table with no other change; the distance metrics share one surface-distance computation."""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import hiend_eval.metrics
from hiend_eval import EMPTY_COMPUTE, REGISTRY, Metric, PairStats, register, score_label_maps, score_masks
from hiend_eval.cli import app

SEG = "ct/body_ct_3mm_ras_30slices_seg.nii.gz"


def _voxel_diff(s: PairStats) -> float:
    return float(s.n_pred - s.n_ref)


TOY = Metric("voxel_diff", "VoxDiff", "vox", None, _voxel_diff, EMPTY_COMPUTE, digits=0)


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def test_a_registered_metric_appears_in_the_csv_the_summary_and_the_table(tmp_path, shared_data, monkeypatch):
    img = nib.load(str(shared_data / SEG))
    full = np.asanyarray(img.dataobj).astype(np.uint8)
    a, b = full[30:80, 20:70, 4:20], full[40:100, 30:80, 10:26]
    b_pred = b.copy()
    b_pred[b_pred == 3] = 0  # kidney_left missed
    arrays = {"A": (np.roll(a, 1, axis=0), a), "B": (b_pred, b)}
    for case, (pred, ref) in arrays.items():
        _save(tmp_path / "pred" / f"{case}.nii.gz", pred, img.affine)
        _save(tmp_path / "ref" / f"{case}.nii.gz", ref, img.affine)
    monkeypatch.setitem(REGISTRY, TOY.name, TOY)

    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["score", str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(out), "--workers", "1"]
    )
    assert res.exit_code == 0, res.stderr

    def expected(case: str, key: str) -> float:
        pred, ref = arrays[case]
        if key == "foreground":
            return float(np.count_nonzero(pred) - np.count_nonzero(ref))
        return float(np.count_nonzero(pred == int(key)) - np.count_nonzero(ref == int(key)))

    summary = json.loads((out / "summary.json").read_text())
    keys = list(summary["mean"])
    assert "3" in keys and keys[-1] == "foreground"
    for row in summary["per_case"]:
        for key, vals in row["labels"].items():
            assert list(vals)[-2:] == ["voxel_diff", "flag"]
            assert vals["voxel_diff"] == expected(row["case"], key), (row["case"], key)
    # a label absent from one case (filled in after all cases were scored) gets the metric too
    assert any(r["labels"][k]["flag"] == "absent_both" for r in summary["per_case"] for k in keys)
    for key in keys:
        assert summary["mean"][key]["voxel_diff"] == pytest.approx(
            np.mean([expected(c, key) for c in arrays])
        )
    assert summary["per_case"][1]["labels"]["3"]["voxel_diff"] == -np.count_nonzero(b == 3)

    with (out / "per_case.csv").open() as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert header == [
        "case",
        "label",
        "name",
        "dice",
        "iou",
        "hd95",
        "assd",
        "nsd",
        "volume_pred_ml",
        "volume_ref_ml",
        "voxel_diff",
        "flag",
    ]
    for row in rows:
        assert float(row[header.index("voxel_diff")]) == expected(row[0], row[1])

    lines = res.stdout.splitlines()  # the table (rich may wrap a header over two lines)
    header = [line for line in lines if line.startswith("┃")]
    assert any("VoxDiff" in line for line in header) and any("vox" in line for line in header)
    row3 = next(line.split("│") for line in lines if line.startswith("│ 3 "))
    assert row3[8].strip() == f"{-np.count_nonzero(b == 3) / 2:.0f}"  # the column after NSD, digits=0


def test_without_the_toy_the_outputs_are_the_built_in_ones():
    assert [m.name for m in REGISTRY.values()] == [
        "dice",
        "iou",
        "hd95",
        "assd",
        "nsd",
        "volume_pred_ml",
        "volume_ref_ml",
    ]
    assert [m.header for m in REGISTRY.values() if m.mean] == ["Dice", "IoU", "HD95 mm", "ASSD mm", "NSD"]


def test_distances_are_computed_once_for_every_metric_that_needs_them(monkeypatch):
    calls = []
    real = hiend_eval.metrics.surface_distances_of_surfaces

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    def _max_distance(s: PairStats) -> float:
        d_pred, d_ref = s.distances()
        return float(max(d_pred.max(), d_ref.max()))

    hausdorff = Metric("hd100", "HD", "mm", False, _max_distance, "diagonal", needs_distances=True)
    monkeypatch.setattr(hiend_eval.metrics, "surface_distances_of_surfaces", counting)
    monkeypatch.setitem(REGISTRY, hausdorff.name, hausdorff)
    pred = np.zeros((1, 1, 40), bool)
    pred[0, 0, :3] = True
    ref = pred.copy()
    pred[0, 0, 39] = True
    s = score_masks(pred, ref, 1.0)
    assert len(calls) == 1
    assert s.hd100 == 37.0 and s.hd95 == pytest.approx(0.85 * 37) and s.flag is None
    calls.clear()
    s = score_masks(pred, np.zeros_like(ref), (2.0, 2.0, 2.0))  # missed: the diagonal, no distances at all
    assert not calls and s.hd100 == s.hd95 == pytest.approx(2 * math.sqrt(1 + 1 + 40**2))
    calls.clear()
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[4:6, 4:6, 4:6] = 2
    out = score_label_maps(np.roll(labels, 1, axis=0), labels, (1.0, 1.0, 1.0), [1, 2])
    assert len(calls) == 3 and all("hd100" in s.values for s in out.values())  # 1, 2 and foreground


def test_only_the_metrics_asked_for_are_computed(monkeypatch):
    calls = []
    monkeypatch.setattr(hiend_eval.metrics, "surface_distances_of_surfaces", lambda *a, **k: calls.append(1))
    pred = np.zeros((5, 5, 5), bool)
    pred[1:3, 1:3, 1:3] = True
    s = score_masks(pred, np.roll(pred, 1, axis=0), 1.0, metrics=[REGISTRY["dice"], REGISTRY["iou"]])
    assert list(s.values) == ["dice", "iou"] and s.dice == pytest.approx(0.5) and not calls
    with pytest.raises(AttributeError, match="hd95"):
        _ = s.hd95


def test_metric_definitions_are_checked():
    with pytest.raises(ValueError, match="empty rule"):
        Metric("x", "X", "", True, _voxel_diff, empty="zero_or_nan")
    with pytest.raises(ValueError, match="reserved"):
        Metric("flag", "Flag", "", True, _voxel_diff)
    with pytest.raises(ValueError, match="already registered"):
        register(Metric("dice", "Dice", "", True, _voxel_diff))


def test_scores_travel_between_processes():
    pred = np.zeros((5, 5, 5), bool)
    pred[1:3, 1:3, 1:3] = True
    s = score_masks(pred, np.zeros_like(pred), (1.0, 2.0, 3.0))
    back = pickle.loads(pickle.dumps(s))
    assert back.flag == "false_positive" and back.hd95 == s.hd95 and list(back.values) == list(s.values)
