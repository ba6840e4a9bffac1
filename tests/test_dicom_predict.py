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
from hiend_data.discovery import collect_cases
from hiend_model.checkpoint import save_checkpoint
from hiend_model.cli import app
from hiend_model.mae import build
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


# ------------------------------------------------------------------ DICOM-SEG out (predict --format)

ABDOMEN = "abdomen_ct_1.5mm_lps.nii.gz"
NAMES = {"1": "liver", "2": "spleen"}


@pytest.fixture(scope="module")
def named_ckpt(ckpt, tmp_path_factory) -> Path:
    """The same model with the label names a fine-tuned checkpoint carries (extra.labels)."""
    from hiend_model.checkpoint import load_checkpoint

    model, info = load_checkpoint(ckpt, expected_kind="unetr")
    path = tmp_path_factory.mktemp("named") / "named.safetensors"
    return save_checkpoint(path, model, plan=info.plan, extra={"labels": NAMES})


@pytest.fixture(scope="module")
def abdomen_series(shared_data, tmp_path_factory) -> Path:
    img = nib.load(str(shared_data / "ct" / ABDOMEN))
    hu, affine = np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    return _dicom_helpers().write_series(hu, affine, tmp_path_factory.mktemp("dcm") / "abdomen", seed=3)


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_predict_dicom_seg_decodes_to_the_nifti_of_the_same_run(named_ckpt, abdomen_series, tmp_path):
    import highdicom as hd
    import pydicom

    from hiend_data import load_volume
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import decode_on_source, segment_names
    from hiend_data.geometry import place_on_grid

    out = tmp_path / "out"
    r = CliRunner().invoke(
        app, ["predict", str(named_ckpt), str(abdomen_series), "--out", str(out), "--format", "both", "-q"]
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["abdomen.dcm", "abdomen.nii.gz"]
    nifti = nib.load(str(out / "abdomen.nii.gz"))
    want = np.asarray(nifti.dataobj)
    assert set(np.unique(want)) == {0, 1, 2}  # every class present: every segment is exercised

    # pydicom reads it; it is a SEG of the source series, whose frames reference its images
    ds = pydicom.dcmread(out / "abdomen.dcm")
    headers = series_headers(abdomen_series)
    source_uids = {h.SOPInstanceUID for h in headers}
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for frame in ds.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced and referenced <= source_uids
    assert [(s.SegmentNumber, s.SegmentLabel) for s in ds.SegmentSequence] == [(1, "liver"), (2, "spleen")]
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert segment_names(out / "abdomen.dcm") == {1: "liver", 2: "spleen"}

    # highdicom decodes it onto the source series' grid: the NIfTI map, voxel for voxel
    seg = hd.seg.segread(out / "abdomen.dcm")
    assert seg.get_segment_numbers() == [1, 2]
    source = load_volume(abdomen_series)
    decoded = decode_on_source(out / "abdomen.dcm", headers, source.affine, source.shape)
    np.testing.assert_allclose(nifti.affine, source.affine, atol=1e-4)
    assert decoded.shape == want.shape and np.array_equal(decoded, want)

    # the compact LABELMAP kind (--seg-type labelmap) decodes to the same map
    r = CliRunner().invoke(
        app,
        ["predict", str(named_ckpt), str(abdomen_series), "--out", str(tmp_path / "lm"), "--format", "dicom-seg",
         "--seg-type", "labelmap", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["abdomen.dcm"]
    assert pydicom.dcmread(tmp_path / "lm" / "abdomen.dcm").SegmentationType == "LABELMAP"
    lm = decode_on_source(tmp_path / "lm" / "abdomen.dcm", headers, source.affine, source.shape)
    assert np.array_equal(lm, want)

    # read alone (no source): its grid is a block of the source's (slices in its own order): placed on
    # the source grid without interpolation it is the same map again
    alone = load_volume(out / "abdomen.dcm")
    placed = place_on_grid(alone.array, alone.affine, want.shape, source.affine)
    assert placed is not None and np.array_equal(placed, want)


def test_seg_of_a_multiframe_source_round_trips(small_volume, tmp_path):
    """A label map on an Enhanced CT (one multi-frame file) comes back through the frames it references."""
    from hiend_data import load_volume
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import decode_on_source, write_seg

    hu, affine = small_volume
    path = _dicom_helpers().write_multiframe(hu, affine, tmp_path / "enhanced.dcm")
    vol = load_volume(path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[2:9, 3:7, 1:4] = 1
    labels[10:, :2, 5:] = 3
    headers = series_headers(path)
    seg = write_seg(labels, vol.affine, headers, tmp_path / "seg.dcm", {1: "liver", 3: "aorta"})
    decoded = decode_on_source(seg, headers, vol.affine, vol.shape)
    assert np.array_equal(decoded, labels)


@pytest.fixture(scope="module")
def small_volume(shared_data) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(shared_data / "ct" / SCAN))
    hu = np.asarray(img.dataobj)[::4, ::4, ::3].astype(np.int16)
    affine = np.asarray(img.affine, dtype=np.float64) @ np.diag([4.0, 4.0, 3.0, 1.0])
    return hu, affine


def test_dicom_seg_refusals_leave_nothing_written(
    named_ckpt, shared_data, small_volume, tmp_path, monkeypatch
):
    runner = CliRunner()
    nifti = shared_data / "ct" / SCAN
    out = tmp_path / "out"

    line = _one_line_exit_2(
        runner.invoke(
            app, ["predict", str(named_ckpt), str(nifti), "--out", str(out), "--format", "dicom-seg"]
        )
    )
    assert str(nifti) in line and "needs DICOM input" in line
    line = _one_line_exit_2(
        runner.invoke(app, ["predict", str(named_ckpt), str(nifti), "--out", str(out), "--format", "dcm"])
    )
    assert "'dcm'" in line and "nifti, dicom-seg, both" in line

    hu, affine = small_volume
    series = _dicom_helpers().write_series(hu, affine, tmp_path / "s", seed=4)
    bad = tmp_path / "dataset.json"
    bad.write_text('{"labels": {"background": 0, "liver": 1, "tumour": 5}}')
    line = _one_line_exit_2(
        runner.invoke(app, ["predict", str(named_ckpt), str(series), "--out", str(out), "--labels", str(bad)])
    )
    assert str(bad) in line and "[5]" in line and "3 classes" in line

    # a SEG is a label map, not a scan: refused whatever the output format
    from hiend_data import load_volume
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import write_seg

    vol = load_volume(series)
    seg = write_seg(
        np.ones(vol.shape, np.uint8), vol.affine, series_headers(series), tmp_path / "in" / "s.dcm"
    )
    for fmt in ("nifti", "dicom-seg"):
        line = _one_line_exit_2(
            runner.invoke(app, ["predict", str(named_ckpt), str(seg), "--out", str(out), "--format", fmt])
        )
        assert line.endswith(f"{seg}: a DICOM Segmentation (a label map), not a scan to segment")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "highdicom" else real_find_spec(name, *a),
    )
    line = _one_line_exit_2(
        runner.invoke(
            app, ["predict", str(named_ckpt), str(series), "--out", str(out), "--format", "dicom-seg"]
        )
    )
    assert "pip install 'hiend-model[dicom]'" in line
    assert not out.exists()


def test_info_shows_the_label_names(named_ckpt, ckpt):
    r = CliRunner().invoke(app, ["info", str(named_ckpt)])
    assert r.exit_code == 0, r.output
    assert "labels: 1 liver, 2 spleen" in r.stdout
    r = CliRunner().invoke(app, ["info", str(ckpt)])
    assert "labels: none" in r.stdout


def test_score_reads_dicom_seg_like_the_nifti_of_the_same_map(small_volume, tmp_path):
    """hiend-eval score on DICOM-SEG predictions (and references): the same numbers as on the NIfTI
    maps they encode; a SEG covering only the labelled slices is placed on the reference grid without
    interpolation; segment labels name the values."""
    import json

    from hiend_data import load_volume, save_volume
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import write_seg
    from hiend_eval.cli import app as eval_app

    hu, affine = small_volume
    series = _dicom_helpers().write_series(hu, affine, tmp_path / "series", seed=5)
    vol = load_volume(series)
    x, y, z = vol.shape
    ref = np.zeros(vol.shape, np.uint8)
    ref[2:12, 3:15, 2:6] = 1
    ref[14:22, 10:20, 3:5] = 2
    pred = np.zeros_like(ref)
    pred[3:12, 3:14, 3:6] = 1  # a slice short, a row short
    pred[14:20, 10:20, 3:5] = 2
    pred[1, 1, 4] = 2  # a false-positive voxel
    assert pred[:, :, 0].sum() == 0 and pred[:, :, -1].sum() == 0  # the SEG leaves those slices out
    folders = {k: tmp_path / k for k in ("pred_nii", "pred_seg", "ref_nii", "ref_seg")}
    for folder in folders.values():
        folder.mkdir()
    names = {1: "liver", 2: "spleen"}
    save_volume(folders["pred_nii"] / "case1.nii.gz", pred, like=vol)
    save_volume(folders["ref_nii"] / "case1.nii.gz", ref, like=vol)
    write_seg(pred, vol.affine, series_headers(series), folders["pred_seg"] / "case1.dcm", names)
    write_seg(ref, vol.affine, series_headers(series), folders["ref_seg"] / "case1.dcm", names)
    assert load_volume(folders["pred_seg"] / "case1.dcm").shape[2] < z

    def score(p: str, r: str) -> dict:
        res = CliRunner().invoke(
            eval_app,
            ["score", str(folders[p]), str(folders[r]), "--out", str(tmp_path / f"{p}-{r}"), "--json"],
        )
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout.strip().splitlines()[-1])

    want = score("pred_nii", "ref_nii")
    assert 0.5 < want["mean"]["1"]["dice"] < 1.0 and want["names"]["1"] == "1"
    for p, r in (("pred_seg", "ref_nii"), ("pred_nii", "ref_seg"), ("pred_seg", "ref_seg")):
        got = score(p, r)
        assert got["mean"] == want["mean"], (p, r)
        assert got["names"]["1"] == "liver" and got["names"]["2"] == "spleen"
    # --format both: the NIfTI map of a case is scored, its SEG beside it is not a second prediction
    (folders["pred_nii"] / "case1.dcm").write_bytes((folders["pred_seg"] / "case1.dcm").read_bytes())
    assert score("pred_nii", "ref_nii")["mean"] == want["mean"]


def test_predict_picks_a_series_of_a_whole_study_folder(named_ckpt, small_volume, tmp_path):
    """A PACS export puts a study's series in one folder: refused with the series listed, then
    segmented with --series UID (NIfTI and SEG of that series)."""
    import pydicom

    hu, affine = small_volume
    helpers = _dicom_helpers()
    study = tmp_path / "study"
    helpers.write_series(hu, affine, study, seed=6, series_uid="1.2.826.0.9.1", desc="AX 12mm")
    helpers.write_series(
        hu[:, :, ::-1].copy(), affine, study, seed=7, series_uid="1.2.826.0.9.2", desc="AX B"
    )
    out = tmp_path / "out"
    line = _one_line_exit_2(
        CliRunner().invoke(app, ["predict", str(named_ckpt), str(study), "--out", str(out)])
    )
    assert "2 series in one folder" in line and "1.2.826.0.9.1" in line and "--series" in line
    assert not out.exists()
    r = CliRunner().invoke(
        app,
        ["predict", str(named_ckpt), str(study), "--out", str(out), "--format", "both", "--series", "1.2.826.0.9.2",
         "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ds = pydicom.dcmread(out / "study.dcm")
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.9.2"
    assert nib.load(str(out / "study.nii.gz")).shape == hu.shape


def test_series_folders_of_the_same_name_get_their_parents_prefixed(small_volume, tmp_path):
    """A PACS export ``export/<patient>/CT/``: one output per patient, named as discovery names them."""
    hu, affine = small_volume
    helpers = _dicom_helpers()
    export = tmp_path / "export"
    helpers.write_series(hu, affine, export / "patient1" / "CT", seed=8)
    helpers.write_series(hu, affine, export / "patient2" / "CT", seed=9)
    helpers.write_series(hu, affine, export / "patient3" / "PET_CT", seed=10)
    cases = collect_cases([export])
    assert [c.name for c in cases] == ["patient1__CT", "patient2__CT", "PET_CT"]
    from hiend_data.discovery import discover

    assert [c.case_id for c in discover(export)] == sorted(c.name for c in cases)
