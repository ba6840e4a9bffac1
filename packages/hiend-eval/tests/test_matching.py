"""Pairing predictions with references by hiend's one naming rule."""

from __future__ import annotations

import pytest

import hiend_eval.case
import hiend_eval.labelnames
import hiend_eval.matching
import hiend_eval.score
import hiend_eval.summary
from hiend_eval.matching import match_cases


def test_matching_follows_hiend_data_naming(tmp_path):
    for name in ("A_0000.nii.gz", "B.nii", "x_0001.nii.gz", ".A.nii.gz.tmp.nii.gz", "notes.txt"):
        (tmp_path / "pred").mkdir(exist_ok=True)
        (tmp_path / "pred" / name).write_bytes(b"")
    for name in ("A.nii.gz", "B.nii.gz", "x.nii.gz"):
        (tmp_path / "ref").mkdir(exist_ok=True)
        (tmp_path / "ref" / name).write_bytes(b"")
    m = match_cases(tmp_path / "pred", tmp_path / "ref")
    assert [(p.case, p.pred.name if p.pred else None) for p in m.pairs] == [
        ("A", "A_0000.nii.gz"),
        ("B", "B.nii"),
        ("x", None),
    ]
    # x_0001 names a case of its own (a channel file only beside its _0000), hidden and non-image files are skipped
    assert m.missing_predictions == ["x"] and m.unmatched_predictions == ["x_0001.nii.gz"]


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("match_cases", hiend_eval.matching),
        ("Matching", hiend_eval.matching),
        ("CasePair", hiend_eval.matching),
        ("check_no_loop", hiend_eval.matching),
        ("read_label_source", hiend_eval.labelnames),
        ("read_checkpoint_label_names", hiend_eval.labelnames),
        ("check_seg_names", hiend_eval.labelnames),
        ("score_case", hiend_eval.case),
        ("summarize", hiend_eval.summary),
        ("conventions", hiend_eval.summary),
    ],
)
def test_moved_names_keep_their_old_path_in_score(name, home):
    assert getattr(hiend_eval.score, name) is getattr(home, name)
