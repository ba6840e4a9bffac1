"""hiend-model predict on DICOM series (issue 10): the same label map as from the NIfTI of the same scan.

The series are written from the real scans by hiend-data's DICOM test helper (one file per slice,
shuffled names); a folder of series folders gives one output per series, named by its folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hiend_data import Plan
from hiend_model.checkpoint import save_checkpoint
from hiend_model.cli import app
from hiend_model.mae import build
from hiend_model.predict import collect_cases
from hiend_model.unetr import UNETR

ROOT = Path(__file__).resolve().parents[1]
SCAN = "body_ct_3mm_ras_30slices.nii.gz"


def _dicom_helpers():
    spec = importlib.util.spec_from_file_location(
        "hiend_dicom_test", ROOT / "packages/hiend-data/tests/test_dicom.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    mae = build("tiny", img_size=32, patch_size=16, embed_dim=24, depth=4, num_heads=2, decoder_embed_dim=24,
                decoder_num_heads=2)  # fmt: skip
    torch.manual_seed(1)
    model = UNETR.from_mae(mae, num_classes=3, feature_size=4).eval()
    with torch.no_grad():  # a visible spread of classes from a random net: sharpen its output layer
        for p in model.out.parameters():
            p.mul_(50)
    plan = Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "u.safetensors", model, plan=plan)


def test_predict_on_a_dicom_series_equals_predict_on_its_nifti(shared_data, ckpt, tmp_path):
    helpers = _dicom_helpers()
    img = nib.load(str(shared_data / "ct" / SCAN))
    hu, affine = np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    pool = tmp_path / "series"
    helpers.write_series(hu, affine, pool / "patient_a", seed=1)
    helpers.write_series(hu[::-1].copy(), affine, pool / "patient_b", seed=2)  # another scan
    cases = collect_cases([pool])
    assert [c.name for c in cases] == ["patient_a", "patient_b"]
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(ckpt), str(pool), "--out", str(tmp_path / "from_dicom"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["predict", str(ckpt), str(shared_data / "ct" / SCAN), "--out", str(tmp_path / "nii"), "-q"]
    )
    assert r.exit_code == 0, r.output
    a = nib.load(str(tmp_path / "from_dicom" / "patient_a.nii.gz"))
    ref = nib.load(str(tmp_path / "nii" / SCAN.replace("_0000", "")))
    # the DICOM volume keeps the scanner's array order; compare in the canonical (RAS) orientation
    a_c, ref_c = nib.as_closest_canonical(a), nib.as_closest_canonical(ref)
    np.testing.assert_allclose(a_c.affine, ref_c.affine, atol=1e-3)
    got, want = np.asarray(a_c.dataobj), np.asarray(ref_c.dataobj)
    assert got.shape == want.shape and len(np.unique(want)) > 1
    assert np.array_equal(got, want)
    assert (tmp_path / "from_dicom" / "patient_b.nii.gz").is_file()
