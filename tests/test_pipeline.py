"""The packages chained through their command lines: phantom -> preprocess -> predict -> score.

Each test checks numbers one package produces against what another package computes independently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BIN = Path(sys.executable).parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], text=True, capture_output=True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "raw"
    proc = cli("hiend-data", "phantom", str(out), "--cases", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    return out


def test_label_round_trip_scores_perfect(phantom: Path, tmp_path: Path) -> None:
    """Reference labels through hiend-data's preprocessing and back score Dice 1 / HD95 0 in hiend-eval.

    The plan upsamples every axis (0.75 x the scan's own spacing, in RAS axis order): nearest-neighbour
    resampling to a finer grid and back is exact, so anything but a perfect score is a geometry bug.
    """
    from hiend_data import Plan, load_volume, preprocess_case, restore_label, save_volume

    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for label_path in sorted((phantom / "labelsTr").glob("*.nii.gz")):
        case = label_path.name.removesuffix(".nii.gz")
        image = load_volume(phantom / "imagesTr" / f"{case}_0000.nii.gz")
        label = load_volume(label_path)
        ornt = nib.orientations.io_orientation(label.affine)
        ras_spacing = [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(ornt):
            ras_spacing[int(target)] = 0.75 * label.spacing[axis]
        pre = preprocess_case(image, Plan(spacing=tuple(ras_spacing)), label=label)
        save_volume(pred_dir / f"{case}.nii.gz", restore_label(pre.label, pre.record), like=label)
    proc = cli(
        "hiend-eval",
        "score",
        str(pred_dir),
        str(phantom / "labelsTr"),
        "--out",
        str(tmp_path / "s"),
        "--labels",
        str(phantom / "dataset.json"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(summary["per_case"]) == 2
    for case in summary["per_case"]:
        for value, m in case["labels"].items():
            if m["flag"] == "absent":
                continue
            assert m["dice"] == 1.0, (case["case"], value)
            assert m["hd95"] == 0.0 and m["nsd"] == 1.0, (case["case"], value)


@pytest.mark.slow
def test_predict_then_score_an_empty_model(phantom: Path, tmp_path: Path) -> None:
    """A UNETR that always says background: predict writes maps on each input's grid, and the scorer
    flags every organ as missed with HD95 = the image's physical diagonal (never NaN, never hidden)."""
    import torch

    from hiend_data import Plan
    from hiend_model import UNETR, build
    from hiend_model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    # a 4-block encoder: what is tested is the outputs' grid and the scores, not the network
    model = UNETR.from_mae(build("tiny", depth=4, embed_dim=48, num_heads=4), num_classes=7, feature_size=4)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0, 0, 0]))
    ckpt = tmp_path / "empty.safetensors"
    save_checkpoint(ckpt, model, plan=Plan(spacing=(3.0, 3.0, 3.0), crop_size=(48, 48, 48)))

    pred = tmp_path / "pred"
    proc = cli(
        "hiend-model", "predict", str(ckpt), str(phantom / "imagesTr"), "--out", str(pred), "--overlap", "0"
    )
    assert proc.returncode == 0, proc.stderr
    for image_path in sorted((phantom / "imagesTr").glob("*_0000.nii.gz")):
        case = image_path.name.removesuffix("_0000.nii.gz")
        src, out = nib.load(image_path), nib.load(pred / f"{case}.nii.gz")
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert not np.asarray(out.dataobj).any()

    proc = cli(
        "hiend-eval", "score", str(pred), str(phantom / "labelsTr"), "--out", str(tmp_path / "s"), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in summary["per_case"]:
        ref = nib.load(phantom / "labelsTr" / f"{case['case']}.nii.gz")
        diagonal = float(np.linalg.norm(np.array(ref.shape) * np.array(ref.header.get_zooms()[:3])))
        present = set(np.unique(np.asarray(ref.dataobj)).astype(int)) - {0}
        assert {int(v) for v in case["labels"] if v != "foreground"} >= present
        for value in present:
            m = case["labels"][str(value)]
            assert m["flag"] == "missed" and m["dice"] == 0.0 and m["nsd"] == 0.0
            assert m["hd95"] == pytest.approx(diagonal, rel=1e-6)
            assert m["volume_pred_ml"] == 0.0 and m["volume_ref_ml"] > 0
    counts = summary["counts"]
    assert sum(counts[str(v)]["missed"] for v in range(1, 7)) == sum(
        len(set(np.unique(np.asarray(nib.load(p).dataobj)).astype(int)) - {0})
        for p in (phantom / "labelsTr").glob("*.nii.gz")
    )
