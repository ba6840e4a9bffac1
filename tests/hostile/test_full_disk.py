"""A full disk (issue 11), simulated: every hiend writer goes through hiend_data.atomic, whose flush
(fsync of the temporary file) raises ENOSPC here. predict, score and a checkpoint write must answer with
one line (exit 2 for the commands), leave the previous outputs byte-identical and no temporary file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import hiend_data.atomic as atomic
from hiend_data import Plan
from hiend_data.phantom import make_phantom_dataset
from hiend_eval.cli import app as eval_app
from hiend_model.checkpoint import save_checkpoint
from hiend_model.cli import app as model_app
from hiend_model.mae import build
from hiend_model.unetr import UNETR


def _full(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def _failing(code: int):
    def fail(path):
        raise OSError(code, os.strerror(code), str(path))

    return fail


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_line_2(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output[-1500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    raw = make_phantom_dataset(root / "raw", cases=1, seed=2, test_cases=2)
    torch.manual_seed(0)
    mae = build("tiny", img_size=32, patch_size=16, embed_dim=24, depth=4, num_heads=2, decoder_embed_dim=24,
                decoder_num_heads=2)  # fmt: skip
    unetr = UNETR.from_mae(mae, num_classes=7, feature_size=4).eval()
    ckpt = save_checkpoint(
        root / "u.safetensors", unetr, plan=Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32))
    )
    return raw, ckpt, unetr


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_predict_and_score_on_a_full_or_read_only_disk_keep_the_previous_outputs(
    setup, tmp_path, monkeypatch, code, said
):
    # (a read-only folder cannot be made with chmod when the tests run as root: simulated at the flush)
    raw, ckpt, _ = setup
    runner = CliRunner()
    pred, score = tmp_path / "pred", tmp_path / "score"
    ok = runner.invoke(model_app, ["predict", str(ckpt), str(raw / "imagesTs"), "--out", str(pred), "-q"])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(eval_app, ["score", str(pred), str(raw / "labelsTs"), "--out", str(score)])
    assert ok.exit_code == 0, ok.output
    before_pred, before_score = _snapshot(pred), _snapshot(score)
    assert len(before_pred) == 2 and "summary.json" in before_score

    monkeypatch.setattr(atomic, "_fsync_file", _failing(code))
    r = runner.invoke(model_app, ["predict", str(ckpt), str(raw / "imagesTs"), "--out", str(pred), "-q"])
    _one_line_2(r, said)
    r = runner.invoke(eval_app, ["score", str(pred), str(raw / "labelsTs"), "--out", str(score)])
    _one_line_2(r, said)
    assert _snapshot(pred) == before_pred and _snapshot(score) == before_score  # whole, old, no temporaries


def test_a_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    _, ckpt, unetr = setup
    path = tmp_path / "model.safetensors"
    path.write_bytes(ckpt.read_bytes())
    monkeypatch.setattr(atomic, "_fsync_file", _full)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(path, unetr)
    assert path.read_bytes() == ckpt.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
