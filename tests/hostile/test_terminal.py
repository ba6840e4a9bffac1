"""Text that reaches a terminal (issue 18): label names, case ids and file names come from user files,
so a name holding ESC / BEL sequences, rich markup (``[/bold]``, ``a[@click=(]b``) or mathtext
(``$\\frac$``) is printed (or drawn) literally: escaped, never obeyed, never a traceback. Numbers that
make no sense (``--workers -3``, a non-finite ``--tolerance`` or ``HIEND_MAX_VOLUME_BYTES``) are one
line, exit 2. Score's folders: an entry named as a label map that cannot be read (a broken link, a
loop, a folder) is refused, never scored as missing; a symbolic-link loop is named as one."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest
from hostile_cli import one_line_exit_2, run

from hiend_eval.report import print_table

HOSTILE = {"1": "[/bold]", "2": "a[@click=(]b", "3": "\x1b]0;pwned\x07 red\x1b[31m", "4": "$\\frac$ _x"}


def _maps(tmp_path):
    """One predicted and one reference label map holding labels 1..4 (a 4x4x4 block each)."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    arr = np.zeros((16, 16, 16), np.uint8)
    for v in range(1, 5):
        arr[4 * (v - 1) : 4 * v, 4:8, 4:8] = v
    for folder in (pred, ref):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), folder / "case_a.nii.gz")
    return pred, ref


def test_score_prints_markup_label_names_literally(tmp_path):
    pred, ref = _maps(tmp_path)
    labels = tmp_path / "dataset.json"
    names = {"background": 0, "[/bold]": 1, "a[@click=(]b": 2, "$\\frac$": 3, "_x": 4}
    labels.write_text(json.dumps({"labels": names}))
    proc = run("hiend-eval", "score", pred, ref, "--out", tmp_path / "out", "--labels", labels)
    assert proc.returncode == 0, proc.stderr
    assert "[/bold]" in proc.stdout and "a[@click=(]b" in proc.stdout  # as written, not parsed
    assert "$\\frac$" in proc.stdout and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "per_label.png").stat().st_size > 0  # mathtext did not parse the name


def test_the_score_table_escapes_control_characters():
    summary = {
        "per_case": [{"case": "c"}],
        "tolerance_mm": 2.0,
        "mean": {k: {"dice": 1.0} for k in [*HOSTILE, "foreground"]},
        "counts": {
            k: {"scored": 1, "missed": 0, "false_positive": 0, "absent_both": 0}
            for k in [*HOSTILE, "foreground"]
        },
        "names": HOSTILE,
        "missing_predictions": ["case\x1b[2Jx"],
        "unmatched_predictions": [],
    }
    out = io.StringIO()
    print_table(summary, file=out)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text and "case\\x1b[2Jx" in text
    assert "[/bold]" in text and "a[@click=(]b" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--workers", "-3"), "--workers -3"),
        (("--tolerance", "nan"), "--tolerance nan"),
        (("--tolerance", "-1"), "--tolerance -1"),
    ],
)
def test_score_refuses_numbers_that_make_no_sense(tmp_path, args, fragment):
    pred, ref = _maps(tmp_path)
    one_line_exit_2(run("hiend-eval", "score", pred, ref, "--out", tmp_path / "out", *args), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-5"])
def test_a_volume_limit_that_is_not_a_finite_number(tmp_path, value):
    pred, _ = _maps(tmp_path)
    one_line_exit_2(
        run("hiend-data", "inspect", pred / "case_a.nii.gz", env={"HIEND_MAX_VOLUME_BYTES": value}),
        "HIEND_MAX_VOLUME_BYTES",
        value,
    )


# -- folders whose entries cannot be read: never scored as "missing" --------------------------------


@pytest.mark.parametrize(
    ("where", "entry", "said"),
    [
        ("pred", "loop", "case_a.nii.gz: a prediction label map's name, but a broken symbolic link or"),
        ("pred", "dangling", "case_a.nii.gz: a prediction label map's name, but a broken symbolic link"),
        ("ref", "loop", "case_b.nii.gz: a reference label map's name, but a broken symbolic link"),
        ("pred", "folder", "case_b.nii.gz: a prediction label map's name, but not a file"),
    ],
    ids=["pred-loop", "pred-dangling", "ref-loop", "pred-folder"],
)
def test_score_refuses_label_map_names_it_cannot_read(tmp_path, where, entry, said):
    """Before: a prediction that is a broken link was scored as missing (Dice 0, exit 0), and a
    reference that is one was left out of the scores without a word."""
    pred, ref = _maps(tmp_path)
    folder = pred if where == "pred" else ref
    name = "case_a.nii.gz" if where == "pred" and entry != "folder" else "case_b.nii.gz"
    target = folder / name
    target.unlink(missing_ok=True)
    if entry == "loop":
        target.symlink_to(target)
    elif entry == "dangling":
        target.symlink_to(tmp_path / "gone.nii.gz")
    else:
        target.mkdir()
    out = tmp_path / "out"
    one_line_exit_2(run("hiend-eval", "score", pred, ref, "--out", out), said)
    assert not out.exists()


@pytest.mark.parametrize("which", ["pred", "ref", "out", "below-out"])
def test_score_names_symlink_loops(tmp_path, which):
    """Before: 'no such file or directory' for a loop given as a folder, 'file exists' for --out."""
    pred, ref = _maps(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    args = {
        "pred": (loop, ref, tmp_path / "out"),
        "ref": (pred, loop, tmp_path / "out"),
        "out": (pred, ref, loop),
        "below-out": (pred, ref, loop / "x"),
    }[which]
    shown = args[2] if which.endswith("out") else loop
    one_line_exit_2(
        run("hiend-eval", "score", args[0], args[1], "--out", args[2]), f"{shown}: a symbolic-link loop"
    )


@pytest.mark.parametrize(
    ("cmd", "fragment"),
    [
        (("hiend-data", "bench", ".", "--seconds", "abc"), "--seconds 'abc'"),
        (("hiend-data", "inspect", ".", "--bogus\x1b[2J"), "no such option: --bogus\\x1b[2J"),
        (("hiend-eval", "score", "a", "b", "--out", "c", "--workers", "x"), "--workers 'x'"),
        (("hiend-model", "predict", "a", "b", "--out", "c", "--sw-batch", "1.5"), "--sw-batch '1.5'"),
    ],
)
def test_usage_errors_are_one_line_in_every_cli(cmd, fragment):
    """A value of the wrong type or an unknown option: one line (what was typed shown escaped), never
    click's usage box, in every package's command line."""
    one_line_exit_2(run(*cmd), fragment)


@pytest.mark.parametrize("seconds", ["inf", "1e400", "nan", "0", "100000"])
def test_a_benchmark_that_would_not_end_is_refused(tmp_path, seconds):
    from hiend_data import Plan
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset

    raw = make_phantom_dataset(tmp_path / "raw", cases=1, seed=1)
    cache = tmp_path / "cache"
    preprocess_dataset(raw, cache, Plan(spacing=(8.0, 8.0, 8.0), crop_size=(16, 16, 16)), progress=False)
    one_line_exit_2(run("hiend-data", "bench", cache, "--seconds", seconds), f"--seconds {float(seconds)}")
