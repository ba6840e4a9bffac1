"""`hiend-eval score` and `hiend-eval run` end to end on small folders of real label-map crops."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hiend_eval import score_label_maps
from hiend_eval.cli import app

SEG = "ct/body_ct_3mm_ras_30slices_seg.nii.gz"
runner = CliRunner()


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def seg(shared_data):
    img = nib.load(str(shared_data / SEG))
    return np.asanyarray(img.dataobj).astype(np.uint8), img.affine.copy()


@pytest.fixture
def folders(tmp_path, seg):
    """ref: A, B, C; pred: A (nnU-Net _0000 name, shifted), B (.nii, kidney_left missed), orphan."""
    full, affine = seg
    a, b, c = full[30:80, 20:70, 4:20], full[40:100, 30:80, 10:26], full[10:60, 10:60, 0:12]
    _save(tmp_path / "ref" / "A.nii.gz", a, affine)
    _save(tmp_path / "ref" / "B.nii.gz", b, affine)
    _save(tmp_path / "ref" / "C.nii.gz", c, affine)
    _save(tmp_path / "pred" / "A_0000.nii.gz", np.roll(a, 1, axis=0), affine)
    b_pred = b.copy()
    b_pred[b_pred == 3] = 0
    _save(tmp_path / "pred" / "B.nii", b_pred, affine)
    _save(tmp_path / "pred" / "orphan.nii.gz", a, affine)
    values = sorted((set(np.unique(a)) | set(np.unique(b)) | set(np.unique(c))) - {0})
    names = {"background": 0, **{f"s{v}": int(v) for v in values}, "not_in_any_map": 250}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": names}))
    arrays = {"A": (np.roll(a, 1, axis=0), a), "B": (b_pred, b), "C": (np.zeros_like(c), c)}
    return tmp_path, arrays, [int(v) for v in values] + [250]


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_score_folders_summary_and_csv(folders):
    root, arrays, values = folders
    out = root / "out"
    res = _invoke(
        "score",
        root / "pred",
        root / "ref",
        "--out",
        out,
        "--labels",
        root / "dataset.json",
        "--tolerance",
        "3",
        "--workers",
        "2",
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in summary["per_case"]] == ["A", "B", "C"]
    assert summary["missing_predictions"] == ["C"] and summary["unmatched_predictions"] == ["orphan.nii.gz"]
    assert (
        summary["tolerance_mm"] == 3.0
        and summary["names"]["3"] == "s3"
        and summary["names"]["250"] == "not_in_any_map"
    )
    spacing = (3.0, 3.0, 3.0)
    for row in summary["per_case"]:
        pred, ref = arrays[row["case"]]
        expected = score_label_maps(pred, ref, spacing, values, tolerance=3.0)
        assert list(row["labels"]) == [str(v) for v in values] + ["foreground"]
        for key, scores in expected.items():
            for field, value in scores.as_dict().items():
                got = row["labels"][key][field]
                if isinstance(value, float) and math.isnan(value):
                    assert got is None, (row["case"], key, field)
                else:
                    assert got == pytest.approx(value), (row["case"], key, field)
    # kidney_left (3): shifted in A, missed in B (deleted) and C (no prediction at all)
    assert summary["counts"]["3"] == {
        "cases": 3,
        "scored": 3,
        "absent_both": 0,
        "missed": 2,
        "false_positive": 0,
    }
    assert summary["counts"]["250"]["absent_both"] == 3 and summary["mean"]["250"]["dice"] is None
    dice3 = [row["labels"]["3"]["dice"] for row in summary["per_case"]]
    assert dice3[1:] == [0.0, 0.0] and summary["mean"]["3"]["dice"] == pytest.approx(sum(dice3) / 3)
    diag = float(np.linalg.norm(np.array(arrays["C"][1].shape) * 3.0))
    assert summary["per_case"][2]["labels"]["3"]["hd95"] == pytest.approx(diag)
    assert summary["per_case"][2]["labels"]["foreground"]["flag"] == "missed"
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(rows) == 3 * (len(values) + 1)
    row = next(r for r in rows if r["case"] == "A" and r["label"] == "5")
    assert float(row["hd95"]) == pytest.approx(summary["per_case"][0]["labels"]["5"]["hd95"])
    assert row["name"] == "s5" and row["flag"] == ""
    row = next(r for r in rows if r["case"] == "B" and r["label"] == "250")
    assert row["dice"] == "" and row["flag"] == "absent_both"
    assert (out / "per_label.png").stat().st_size > 1000
    assert "scored" in res.stderr + res.stdout


def test_labels_default_to_every_value_found_in_any_case(folders):
    root, arrays, values = folders
    res = _invoke("score", root / "pred", root / "ref", "--out", root / "out", "--workers", "1")
    assert res.exit_code == 0, res.stderr
    summary = json.loads((root / "out" / "summary.json").read_text())
    found = sorted(
        {int(v) for p, r in arrays.values() for v in np.unique(np.concatenate([p.ravel(), r.ravel()]))} - {0}
    )
    assert list(summary["mean"]) == [str(v) for v in found] + ["foreground"]
    assert summary["names"]["3"] == "3"


def test_json_is_the_last_stdout_line(folders):
    root, _, _ = folders
    exe = Path(sys.executable).with_name("hiend-eval")
    proc = subprocess.run(
        [str(exe), "score", str(root / "pred"), str(root / "ref"), "--out", str(root / "o"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == json.loads((root / "o" / "summary.json").read_text())


def test_single_files(folders):
    root, arrays, _ = folders
    res = _invoke("score", root / "pred" / "B.nii", root / "ref" / "B.nii.gz", "--out", root / "o")
    assert res.exit_code == 0, res.stderr
    summary = json.loads((root / "o" / "summary.json").read_text())
    assert [c["case"] for c in summary["per_case"]] == ["B"] and summary["counts"]["3"]["missed"] == 1


def _expect_error(root: Path, args: list, *needles: str) -> None:
    out = root / "out"
    res = _invoke("score", *args, "--out", out)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not out.exists()  # no partial outputs
    assert not [p for p in root.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_unreadable_file(folders):
    root, _, _ = folders
    (root / "ref" / "B.nii.gz").write_bytes(b"not a nifti file at all" * 20)
    _expect_error(root, [root / "pred", root / "ref"], "B.nii.gz")


def test_non_integer_label_map(folders, seg):
    root, arrays, _ = folders
    _save(root / "pred" / "B.nii", arrays["B"][0].astype(np.float32) + 0.5, seg[1])
    _expect_error(root, [root / "pred", root / "ref"], "B.nii", "non-integer")


@pytest.mark.parametrize("change", ["affine", "shape"])
def test_geometry_mismatch_names_the_case(folders, seg, change):
    root, arrays, _ = folders
    affine = seg[1].copy()
    pred = arrays["A"][0]
    if change == "affine":
        affine[0, 3] += 1.5
    else:
        pred = pred[:-1]
    _save(root / "pred" / "A_0000.nii.gz", pred, affine)
    _expect_error(root, [root / "pred", root / "ref"], "case A", "--resample-to-reference")


def test_resample_to_reference(folders, seg):
    root, arrays, _ = folders
    pred, ref = arrays["B"]
    affine = seg[1] @ np.array([[-1, 0, 0, ref.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    _save(root / "pred" / "B.nii", np.ascontiguousarray(pred[::-1]), affine)  # same world, flipped axis
    _expect_error(root, [root / "pred", root / "ref"], "case B")
    res = _invoke("score", root / "pred", root / "ref", "--out", root / "out", "--resample-to-reference")
    assert res.exit_code == 0, res.stderr
    summary = json.loads((root / "out" / "summary.json").read_text())
    b = summary["per_case"][1]["labels"]
    assert b["5"]["dice"] == 1.0 and b["3"]["flag"] == "missed"


def test_value_not_in_dataset_json(folders):
    root, _, _ = folders
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 5}}))
    _expect_error(root, [root / "pred", root / "ref", "--labels", root / "dataset.json"], "dataset.json")


@pytest.mark.parametrize("content", ["{not json", '{"labels": {"bg": 0, "tumour": [1, 2]}}', '{"name": "x"}'])
def test_bad_dataset_json(folders, content):
    root, _, _ = folders
    (root / "dataset.json").write_text(content)
    _expect_error(root, [root / "pred", root / "ref", "--labels", root / "dataset.json"], "dataset.json")


def test_file_and_folder_mixed(folders):
    root, _, _ = folders
    _expect_error(root, [root / "pred" / "B.nii", root / "ref"], "two folders or two files")


def test_failed_run_leaves_an_existing_out_dir_untouched(folders):
    root, _, _ = folders
    out = root / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    (root / "ref" / "C.nii.gz").write_bytes(b"\x1f\x8b broken")
    res = _invoke("score", root / "pred", root / "ref", "--out", out)
    assert res.exit_code == 2 and (out / "summary.json").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_without_matplotlib_only_the_png_is_skipped(folders, monkeypatch, tmp_path_factory):
    root, _, _ = folders
    fake = tmp_path_factory.mktemp("nompl") / "matplotlib"  # shadows the real one in the plot helper
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    res = _invoke("score", root / "pred", root / "ref", "--out", root / "out")
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("matplotlib is not installed") == 1 and "hiend-eval[plot]" in res.stderr
    assert sorted(p.name for p in (root / "out").iterdir()) == ["per_case.csv", "summary.json"]


def _dataset(root: Path, arrays: dict, affine: np.ndarray) -> Path:
    ds = root / "Dataset001_Test"
    for case, (_, ref) in arrays.items():
        _save(ds / "imagesTr" / f"{case}_0000.nii.gz", ref.astype(np.int16) * 10, affine)
        _save(ds / "labelsTr" / f"{case}.nii.gz", ref, affine)
    return ds


def test_run_without_hiend_model_says_what_to_install(folders, seg, monkeypatch):
    root, arrays, _ = folders
    monkeypatch.setitem(sys.modules, "hiend_model.predict", None)
    (root / "m.safetensors").write_bytes(b"x")
    res = _invoke("run", root / "m.safetensors", _dataset(root, arrays, seg[1]), "--out", root / "out")
    assert res.exit_code == 2 and res.stderr.strip() == (
        "error: hiend-eval run needs hiend-model: pip install 'hiend-eval[model]'"
    )


def test_run_predicts_then_scores(folders, seg, monkeypatch):
    """Wiring of `run` with a stand-in predict_files (a perfect model that copies the labels)."""
    root, arrays, _ = folders
    ds = _dataset(root, arrays, seg[1])
    calls = []

    def predict_files(ckpt_path, inputs, out_dir, device="cpu", progress=True):
        calls.append((Path(ckpt_path), [Path(p) for p in inputs], Path(out_dir), device, progress))
        out_dir.mkdir(parents=True)
        written = []
        for img in sorted((ds / "imagesTr").iterdir()):
            vol = nib.load(str(img))
            case = img.name.replace("_0000.nii.gz", "")
            written.append(
                _save(
                    out_dir / f"{case}.nii.gz",
                    (np.asanyarray(vol.dataobj) // 10).astype(np.uint8),
                    vol.affine,
                )
            )
        return written

    monkeypatch.setitem(
        sys.modules, "hiend_model.predict", types.SimpleNamespace(predict_files=predict_files)
    )
    (root / "m.safetensors").write_bytes(b"x")
    res = _invoke("run", root / "m.safetensors", ds, "--out", root / "out", "-q")
    assert res.exit_code == 0, res.stderr
    # the device as every hiend command defaults it (auto: cuda where there is one), -q reaches predict
    assert calls == [(root / "m.safetensors", [ds / "imagesTr"], root / "out" / "predictions", "auto", False)]
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["mean"]["foreground"]["dice"] == 1.0 and summary["missing_predictions"] == []


@pytest.mark.slow
def test_run_with_a_real_tiny_checkpoint(tmp_path, shared_data, seg):
    """`run` = hiend-model's predict_files into DIR/predictions, then exactly `score` of that folder."""
    import torch

    from hiend_data import Plan
    from hiend_data.labels import read_label_names
    from hiend_eval.score import score_folders
    from hiend_model.checkpoint import save_checkpoint
    from hiend_model.config import MAEConfig
    from hiend_model.mae import HiEndMAE
    from hiend_model.unetr import UNETR

    torch.manual_seed(0)
    mae = HiEndMAE(
        MAEConfig(
            img_size=32,
            patch_size=16,
            embed_dim=24,
            depth=4,
            num_heads=2,
            decoder_embed_dim=12,
            decoder_num_heads=2,
            attn_backend="math",
        )
    )
    model = UNETR.from_mae(mae, num_classes=3, feature_size=4).eval()
    ckpt = save_checkpoint(
        tmp_path / "tiny.safetensors", model, plan=Plan(spacing=(3.0, 3.0, 3.0), crop_size=(32, 32, 32))
    )
    labels, affine = seg
    ds = tmp_path / "Dataset002_Body"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "imagesTr" / "body_0000.nii.gz").symlink_to(shared_data / "ct/body_ct_3mm_ras_30slices.nii.gz")
    _save(ds / "labelsTr" / "body.nii.gz", ((labels > 0).astype(np.uint8) + (labels > 50)), affine)
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "bone": 2}}))
    res = _invoke("run", ckpt, ds, "--out", tmp_path / "out", "--workers", "1")
    assert res.exit_code == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    pred = tmp_path / "out" / "predictions" / "body.nii.gz"
    assert nib.load(str(pred)).shape == labels.shape
    again = score_folders(pred.parent, ds / "labelsTr", read_label_names(ds / "dataset.json"))
    assert json.loads(json.dumps(again["per_case"])) == summary["per_case"]
    assert summary["names"]["2"] == "bone"

    # no dataset.json: the names a fine-tuned checkpoint carries
    named = save_checkpoint(
        tmp_path / "named.safetensors", model, plan=Plan(spacing=(3.0, 3.0, 3.0), crop_size=(32, 32, 32)),
        extra={"labels": {"1": "organ", "2": "bone"}},
    )  # fmt: skip
    (ds / "dataset.json").unlink()
    res = _invoke("run", named, ds, "--out", tmp_path / "out2", "--workers", "1")
    assert res.exit_code == 0, res.stderr
    named_summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert named_summary["names"] == summary["names"] and named_summary["mean"] == summary["mean"]


def test_out_is_a_file(folders):
    root, _, _ = folders
    (root / "out").write_text("a file")
    res = _invoke("score", root / "pred", root / "ref", "--out", root / "out")
    assert res.exit_code == 2 and res.stderr.strip().endswith("exists and is not a folder")
    assert (root / "out").read_text() == "a file"


@pytest.mark.parametrize("tolerance", ["-1", "nan"])
def test_bad_tolerance(folders, tolerance):
    root, _, _ = folders
    _expect_error(root, [root / "pred", root / "ref", "--tolerance", tolerance], "--tolerance")


def _hiend_checkpoint(path: Path, extra: dict, fmt: str = "hiend") -> Path:
    """A file with a hiend checkpoint's metadata (written without torch: only the metadata is read)."""
    from safetensors.numpy import save_file

    metadata = {"format": fmt, "kind": "unetr", "config": "{}", "plan": "null", "extra": json.dumps(extra)}
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata=metadata)
    return path


def test_labels_from_a_checkpoint_like_from_its_dataset_json(folders):
    from hiend_data.labels import label_names_to_json, read_label_names

    root, _, values = folders
    names = label_names_to_json(read_label_names(root / "dataset.json"))  # as hiend-train stores them
    ckpt = _hiend_checkpoint(root / "best.safetensors", {"hiend_train": {"epoch": 3}, "labels": names})
    summaries = []
    for source, out in ((root / "dataset.json", root / "out_json"), (ckpt, root / "out_ckpt")):
        res = _invoke(
            "score", root / "pred", root / "ref", "--out", out, "--labels", source, "--workers", "1"
        )
        assert res.exit_code == 0, res.stderr
        summaries.append(json.loads((out / "summary.json").read_text()))
    by_json, by_ckpt = summaries
    assert by_ckpt["names"] == by_json["names"]
    assert by_ckpt["names"]["3"] == "s3" and by_ckpt["names"]["250"] == "not_in_any_map"
    assert list(by_ckpt["mean"]) == [str(v) for v in values] + ["foreground"]
    assert by_ckpt["per_case"] == by_json["per_case"] and by_ckpt["mean"] == by_json["mean"]


def test_checkpoint_without_label_names_is_refused(folders):
    root, _, _ = folders
    ckpt = _hiend_checkpoint(root / "pre.safetensors", {"hiend_train": {"epoch": 3}})
    _expect_error(
        root,
        [root / "pred", root / "ref", "--labels", ckpt],
        str(ckpt),
        "carries no label names",
        "dataset.json",
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: _hiend_checkpoint(p, {"labels": {"1": "a"}}, fmt="other"), "not a hiend checkpoint"),
        (lambda p: _hiend_checkpoint(p, {"labels": {"0": "background"}}), "extra.labels: label key '0'"),
        (lambda p: p.write_bytes(b"\x00" * 20), "not a readable safetensors checkpoint"),
    ],
)
def test_bad_checkpoint_as_labels(folders, make, needle):
    root, _, _ = folders
    ckpt = root / "x.safetensors"
    make(ckpt)
    _expect_error(root, [root / "pred", root / "ref", "--labels", ckpt], str(ckpt), needle)


def test_read_label_source_dispatches_on_the_suffix(folders):
    from hiend_data.labels import read_label_names
    from hiend_eval.labelnames import read_label_source

    root, _, _ = folders
    ckpt = _hiend_checkpoint(root / "u.SAFETENSORS", {"labels": {"2": "spleen", "1": "liver"}})
    assert read_label_source(ckpt) == {1: "liver", 2: "spleen"}
    assert read_label_source(root / "dataset.json") == read_label_names(root / "dataset.json")


def test_workers_0_scores_in_this_process_with_the_same_numbers(folders, monkeypatch):
    """``--workers 0`` means this process alone, as in every hiend command: no process pool is made,
    and the summary equals the one of 2 processes."""
    import concurrent.futures

    root, _, _ = folders
    res = _invoke("score", root / "pred", root / "ref", "-o", root / "two", "--workers", "2")
    assert res.exit_code == 0, res.stderr

    def no_pool(*a, **k):
        raise AssertionError("--workers 0 started a process pool")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    import hiend_eval.score as score_module

    monkeypatch.setattr(score_module, "ProcessPoolExecutor", no_pool)
    res = _invoke("score", root / "pred", root / "ref", "-o", root / "zero", "--workers", "0")
    assert res.exit_code == 0, res.stderr
    two = json.loads((root / "two" / "summary.json").read_text())
    zero = json.loads((root / "zero" / "summary.json").read_text())
    assert zero["mean"] == two["mean"] and zero["per_case"] == two["per_case"]
