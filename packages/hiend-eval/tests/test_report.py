"""Outputs are written atomically: a failure while writing leaves the old files and no temporary file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import hiend_eval.plot
from hiend_eval import score_label_maps
from hiend_eval.cli import app
from hiend_eval.matching import Matching
from hiend_eval.report import PER_CASE, PLOT, SUMMARY, write_outputs
from hiend_eval.summary import summarize


def _summary() -> dict:
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    scores = score_label_maps(np.roll(ref, 1, axis=0), ref, (1.0, 1.0, 1.0), [1])
    return summarize(
        [{"case": "A", "pred": "p.nii.gz", "ref": "r.nii.gz", "labels": scores}],
        {"1": "cube"},
        2.0,
        Matching([]),
    )


class _FailingPlotter:
    """Writes half a PNG into the path it is given, then fails (a full disk, a crashed helper)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.seen: list[str] = []  # the folder's entries when the PNG is drawn

    def draw(self, summary: dict, path: Path) -> bool:
        self.paths.append(path)
        self.seen = sorted(p.name for p in path.parent.iterdir())
        path.write_bytes(b"\x89PNG half")
        raise RuntimeError("plotting failed: disk full")

    def close(self) -> None:
        pass


def _old_outputs(out: Path) -> dict[str, str]:
    out.mkdir(parents=True)
    old = {SUMMARY: "old summary", PER_CASE: "old csv", PLOT: "old png"}
    for name, text in old.items():
        (out / name).write_text(text)
    return old


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(folder.iterdir())}


def test_failure_mid_write_keeps_the_old_files_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out"
    old = _old_outputs(out)
    plotter = _FailingPlotter()
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(_summary(), out, plotter)
    # summary.json and per_case.csv were written, to temporary files beside the old ones, when the PNG failed
    assert plotter.paths and plotter.paths[0].parent == out and plotter.paths[0].name.startswith(f".{PLOT}.")
    temps = [n for n in plotter.seen if n.startswith(".")]
    assert [n.split(".")[1] for n in temps] == ["per_case", "per_label", "summary"] and len(plotter.seen) == 6
    assert _contents(out) == old  # old content intact, no stray file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_while_renaming_keeps_the_old_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    old = _old_outputs(out)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).parent == out:
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        write_outputs(_summary(), out, plotter=None)
    assert _contents(out) == old


def test_failure_in_a_new_folder_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        write_outputs(_summary(), out, _FailingPlotter())
    assert not out.exists()


def test_outputs_replace_old_ones_whole(tmp_path):
    out = tmp_path / "out"
    _old_outputs(out)
    summary = _summary()
    written = write_outputs(summary, out, plotter=None)
    assert written == [out / PER_CASE, out / SUMMARY]
    assert json.loads((out / SUMMARY).read_text()) == summary
    assert (
        (out / PER_CASE)
        .read_text()
        .startswith("case,label,name,dice,iou,hd95,assd,nsd,volume_pred_ml,volume_ref_ml,flag\n")
    )
    assert (out / PLOT).read_text() == "old png"  # not drawn this time: the old one stays
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_the_command_fails_mid_write_without_partial_outputs(tmp_path, monkeypatch, shared_data):
    img = nib.load(str(shared_data / "ct/body_ct_3mm_ras_30slices_seg.nii.gz"))
    seg = np.asanyarray(img.dataobj).astype(np.uint8)[30:70, 20:60, 4:16]
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(seg, img.affine), str(tmp_path / folder / "A.nii.gz"))
    out = tmp_path / "out"
    old = _old_outputs(out)
    monkeypatch.setattr(hiend_eval.plot, "Plotter", _FailingPlotter)
    res = CliRunner().invoke(app, ["score", str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(out)])
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)
    assert _contents(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pred", "ref"]


def test_the_per_label_plot_keeps_its_axis_titles_and_tick_labels_inside_the_figure():
    """per_label.png clipped "DICE" / "HD95" off the left edge and cut the last tick label to
    "foreground union of all labe"."""
    from hiend_eval.plot import figure

    keys = ["1", "2", "foreground"]
    names = {"1": "liver", "2": "spleen", "foreground": "union of all labels"}
    per_case = [
        {"labels": {k: {"dice": 0.1 * (i + j), "hd95": 10.0 * (i + j + 1)} for j, k in enumerate(keys)}}
        for i in range(3)
    ]
    fig = figure({"mean": {k: {} for k in keys}, "names": names, "per_case": per_case})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    bottom = fig.axes[1]
    texts = [ax.yaxis.label for ax in fig.axes] + list(bottom.get_xticklabels())
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text.get_text()
    assert [t.get_text() for t in bottom.get_xticklabels()] == [
        "1 liver",
        "2 spleen",
        "foreground union of all labels",
    ]
    assert [ax.yaxis.label.get_text() for ax in fig.axes] == ["DICE", "HD95 (mm)"]
