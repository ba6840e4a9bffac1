"""Hostile DICOM-SEG labels and outputs (issue 18), through the console scripts:

* a SEG written on series X paired with series Y of the same grid (preprocess): refused, naming the
  SEG and both series (or frames of reference);
* a SEG whose segment is numbered 0, whose frames or pixels name a segment it does not describe, or
  that describes a number twice (score, preprocess): refused, naming the SEG and the number;
* segment names a DICOM Long String cannot hold as written (predict --format dicom-seg): refused
  before anything is written; a non-ASCII name comes back exactly;
* an input whose qform and sform disagree (predict): the label map keeps both, as the input has them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile_cli import one_line_exit_2, run, tiny_checkpoint

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
pytest.importorskip("dicom2nifti")

ROOT = Path(__file__).resolve().parents[2]


def _helpers():
    """``series`` and ``seg_of`` of hiend-data's DICOM-SEG unit tests (tiny synthetic series)."""
    spec = importlib.util.spec_from_file_location(
        "hiend_dicom_seg_test", ROOT / "packages/hiend-data/tests/test_dicom_seg.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _helpers()


def _preprocess(manifest: Path, out: Path):
    return run("hiend-data", "preprocess", manifest, out, "--workers", "0", "--no-progress")


def _no_case_written(cache: Path) -> None:
    assert not list(cache.glob("cases/*.json")) and not list(cache.glob("cases/*.npy"))


def test_seg_of_another_series_refused_by_preprocess(tmp_path):
    data = tmp_path / "data"
    x = H.series(data / "x")
    H.seg_of(x, data / "seg_x.dcm")
    uid_x = pydicom.dcmread(next(x.iterdir())).SeriesInstanceUID
    y = H.series(data / "y")  # another series, the same grid
    uid_y = pydicom.dcmread(next(y.iterdir())).SeriesInstanceUID
    (data / "ok.txt").write_text("x,seg_x.dcm\n")
    assert _preprocess(data / "ok.txt", tmp_path / "ok").returncode == 0
    (data / "bad.txt").write_text("y,seg_x.dcm\n")
    one_line_exit_2(_preprocess(data / "bad.txt", tmp_path / "bad"), "seg_x.dcm", uid_x, uid_y)
    _no_case_written(tmp_path / "bad")
    # a copy of series x's files (its UID) in another frame of reference
    frame = pydicom.dcmread(next(x.iterdir())).FrameOfReferenceUID
    H.series(data / "z", series_uid=uid_x)
    (data / "moved.txt").write_text("z,seg_x.dcm\n")
    one_line_exit_2(
        _preprocess(data / "moved.txt", tmp_path / "moved"), "seg_x.dcm", "frame of reference", frame
    )
    _no_case_written(tmp_path / "moved")


def _edited(src: Path, out: Path, edit) -> Path:
    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(out)
    return out


def _renumber(ds, old: int, new: int, describe: bool) -> None:
    if describe:
        ds.SegmentSequence[old - 1].SegmentNumber = new
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ident = frame.SegmentIdentificationSequence[0]
        if ident.ReferencedSegmentNumber == old:
            ident.ReferencedSegmentNumber = new


def _twice(ds) -> None:
    ds.SegmentSequence[1].SegmentNumber = 1


def _undescribed(ds) -> None:
    del ds.SegmentSequence[2]  # a LABELMAP's spleen: its pixels (value 2) stay


LOST = {  # name: (seg type, edit, fragment of the refusal)
    "zero": ("binary", lambda ds: _renumber(ds, 2, 0, describe=True), "'spleen' has number 0"),
    "stray": ("binary", lambda ds: _renumber(ds, 2, 7, describe=False), "frames of segment 7"),
    "twice": ("binary", _twice, "segment number 1 is described 2 times"),
    "undescribed": ("labelmap", _undescribed, "pixel value 2, which SegmentSequence does not describe"),
}


@pytest.mark.parametrize("kind", LOST)
def test_segments_that_would_be_lost_refused_by_score(tmp_path, kind):
    """Before: Dice 0 for the lost segment and exit 0. Now: one line naming the SEG and the number."""
    seg_type, edit, fragment = LOST[kind]
    ct = H.series(tmp_path / "ct")
    good = H.seg_of(ct, tmp_path / "good.dcm", seg_type)
    bad = _edited(good, tmp_path / f"{kind}.dcm", edit)
    one_line_exit_2(run("hiend-eval", "score", bad, good, "--out", tmp_path / "scores"), bad.name, fragment)
    assert not (tmp_path / "scores").exists()


def test_segment_numbered_zero_refused_by_preprocess(tmp_path):
    ct = H.series(tmp_path / "ct")
    seg = _edited(H.seg_of(ct, tmp_path / "good.dcm"), tmp_path / "zero.dcm", LOST["zero"][1])
    (tmp_path / "m.txt").write_text(f"ct,{seg.name}\n")
    one_line_exit_2(_preprocess(tmp_path / "m.txt", tmp_path / "cache"), "zero.dcm", "has number 0")
    _no_case_written(tmp_path / "cache")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny UNETR (3 classes) on a 32^3 crop at 6 mm."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "u.safetensors")


def _dataset_json(path: Path, name: str) -> Path:
    path.write_text(json.dumps({"labels": {"background": 0, name: 1, "spleen": 2}}, ensure_ascii=False))
    return path


@pytest.mark.parametrize(
    ("name", "fragment", "fmt"),
    [
        ("liver\\spleen", "backslash", "dicom-seg"),
        ("x" * 65, "65 characters", "dicom-seg"),
        ("x" * 65, "65 characters", "both"),
    ],
    ids=["backslash", "long", "long-both"],
)
def test_segment_names_a_seg_cannot_hold_refused_by_predict(ckpt, tmp_path, name, fragment, fmt):
    """Refused before any output: with ``--format both`` not even the NIfTI is written."""
    ct = H.series(tmp_path / "ct")
    labels = _dataset_json(tmp_path / "dataset.json", name)
    out = tmp_path / "out"
    proc = run("hiend-model", "predict", ckpt, ct, "--out", out, "--format", fmt, "--labels", labels, "-q")
    one_line_exit_2(proc, "label 1 name", fragment)
    assert not out.exists() or not list(out.iterdir())


def test_non_ascii_segment_name_comes_back_exactly(ckpt, tmp_path):
    from hiend_data.dicom_seg import segment_names

    ct = H.series(tmp_path / "ct")
    name = "Leber–Läsion 肝"
    labels = _dataset_json(tmp_path / "dataset.json", name)
    out = tmp_path / "out"
    proc = run(
        "hiend-model", "predict", ckpt, ct, "--out", out, "--format", "dicom-seg", "--labels", labels, "-q"
    )
    assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(out / "ct.dcm")
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.SegmentSequence[0].SegmentLabel == name
    assert segment_names(out / "ct.dcm") == {1: name, 2: "spleen"}


def test_predict_keeps_the_inputs_qform_and_sform(ckpt, tmp_path):
    """An input whose qform is the mirror image of its sform: the label map's qform and sform (codes
    included) are the input's, so a viewer reading either form shows it where it shows the scan."""
    sform = np.diag([3.0, 3.0, 3.0, 1.0])
    sform[:3, 3] = [-30.0, -24.0, -12.0]
    qform = sform.copy()
    qform[0, 0], qform[0, 3] = -3.0, -30.0 + 3.0 * 19
    img = nib.Nifti1Image(np.random.default_rng(0).integers(-1000, 1000, (20, 16, 8)).astype(np.int16), None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    nib.save(img, str(tmp_path / "scan.nii.gz"))
    proc = run("hiend-model", "predict", ckpt, tmp_path / "scan.nii.gz", "--out", tmp_path / "out", "-q")
    assert proc.returncode == 0, proc.stderr
    a = nib.load(str(tmp_path / "scan.nii.gz")).header
    b = nib.load(str(tmp_path / "out" / "scan.nii.gz")).header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim"):  # fmt: skip
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    np.testing.assert_allclose(b.get_qform(), qform, atol=1e-5)


# -- segment names that disagree or drive the terminal; frames off the grid ------------------------


def _label(number: int, text: str):
    def edit(ds) -> None:
        ds.SegmentSequence[number - 1].SegmentLabel = text

    return edit


def _swap_names(ds) -> None:
    ds.SegmentSequence[0].SegmentLabel, ds.SegmentSequence[1].SegmentLabel = "spleen", "liver"


@pytest.mark.parametrize(
    ("edit", "which", "fragments"),
    [
        (_swap_names, "pred", ("segment 1 is 'spleen' but good.dcm names label 1 'liver'",)),
        (_label(2, "kidney"), "ref", ("good.dcm: segment 2 is 'spleen' but bad.dcm names label 2 'kidney'",)),
        (_label(1, "li\x1b[31mver\x07"), "pred", ("SegmentLabel: label 1 has name", "control")),
        (_label(1, "   "), "ref", ("SegmentLabel: label 1", "empty")),  # DICOM strips the blanks
    ],
    ids=["swapped", "renamed-reference", "escape", "blank"],
)
def test_segment_names_that_disagree_or_drive_the_terminal(tmp_path, edit, which, fragments):
    """Before: a SEG whose segment 1 is 'spleen' scored against one whose 1 is 'liver' as the same
    structure (Dice 1.0, exit 0), and a SegmentLabel holding ESC printed two pydicom warnings."""
    ct = H.series(tmp_path / "ct")
    good = H.seg_of(ct, tmp_path / "good.dcm")
    bad = _edited(good, tmp_path / "bad.dcm", edit)
    pred, ref = (bad, good) if which == "pred" else (good, bad)
    out = tmp_path / "scores"
    line = one_line_exit_2(run("hiend-eval", "score", pred, ref, "--out", out), "bad.dcm", *fragments)
    assert "\x1b" not in line and not out.exists()


def test_segment_names_checked_against_labels_and_placeholders_agree(ckpt, tmp_path):
    """--labels names 1 'liver': a SEG naming it 'spleen' is refused; hiend's own 'label N' (predict
    without names) agrees with any name."""
    ct = H.series(tmp_path / "ct")
    good = H.seg_of(ct, tmp_path / "good.dcm")
    labels = _dataset_json(tmp_path / "dataset.json", "spleen2")
    one_line_exit_2(
        run("hiend-eval", "score", good, good, "--out", tmp_path / "s1", "--labels", labels),
        "good.dcm: segment 1 is 'liver' but --labels names label 1 'spleen2'",
    )
    unnamed = H.seg_of(ct, tmp_path / "unnamed.dcm", names={1: "label 1", 2: "label 2"})
    proc = run("hiend-eval", "score", unnamed, good, "--out", tmp_path / "s2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "s2" / "summary.json").read_text())["names"]["1"] == "liver"


@pytest.mark.parametrize(("axis", "mm"), [(0, 1.0), (2, 1.4)], ids=["half-voxel-in-plane", "between-slices"])
def test_seg_frames_off_the_image_grid(tmp_path, axis, mm):
    """Frames moved off the voxel centres: preprocess says so (before: 'grid (12, 10, 3) disagrees
    with ... (12, 10, 5)', which blamed the shape); score names both grids."""

    def shift(ds) -> None:
        for frame in ds.PerFrameFunctionalGroupsSequence:
            plane = frame.PlanePositionSequence[0]
            pos = [float(v) for v in plane.ImagePositionPatient]
            pos[axis] += mm
            plane.ImagePositionPatient = pos

    ct = H.series(tmp_path / "data" / "ct")
    good = H.seg_of(ct, tmp_path / "data" / "good.dcm")
    _edited(good, tmp_path / "data" / "moved.dcm", shift)
    (tmp_path / "data" / "m.txt").write_text("ct,moved.dcm\n")
    one_line_exit_2(
        _preprocess(tmp_path / "data" / "m.txt", tmp_path / "cache"),
        "moved.dcm: its frames do not lie on the voxels of",
    )
    _no_case_written(tmp_path / "cache")
    one_line_exit_2(
        run("hiend-eval", "score", tmp_path / "data" / "moved.dcm", good, "--out", tmp_path / "s"),
        "on different grids",
    )
