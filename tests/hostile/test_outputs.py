"""Hostile output places (issue 11): an output that is a file, a folder under a file, a full disk.

Every command reports them as one line naming the path, exit 2, no traceback, and leaves what was
there before intact.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from hostile_cli import one_line_exit_2, run, tiny_checkpoint
from typer.testing import CliRunner

from hiend_data.cli import app as data_app
from hiend_data.phantom import make_phantom_dataset


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs") / "raw"
    make_phantom_dataset(root, cases=2, seed=11, test_cases=1)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "u.safetensors")


def test_output_folders_that_are_files(phantom, ckpt, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    one_line_exit_2(run("hiend-data", "preprocess", phantom, taken, "--spacing", "6"), "taken")
    one_line_exit_2(run("hiend-data", "phantom", taken / "sub", "--cases", "1"), "taken")
    one_line_exit_2(run("hiend-model", "predict", ckpt, phantom / "imagesTs", "--out", taken, "-q"), "taken")
    ref = phantom / "labelsTs"
    one_line_exit_2(run("hiend-eval", "score", ref, ref, "--out", taken), "taken")
    assert taken.read_text() == "keep me"


def test_a_full_disk_during_preprocess_keeps_the_earlier_cache(phantom, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "cache"
    first = runner.invoke(
        data_app, ["preprocess", str(phantom), str(out), "--spacing", "6", "--workers", "0"]
    )
    assert first.exit_code == 0, first.output
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "x.npy"))

    monkeypatch.setattr(np, "save", full)
    r = runner.invoke(data_app, ["preprocess", str(phantom), str(out), "--spacing", "5", "--workers", "0"])
    one_line_exit_2(r, "x.npy", "no space left on device")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # no temporary file left behind (.lock is the writer lock, kept); every file there is whole
    assert not [p for p in after if p.name.startswith(".") and p.name != ".lock"]
    assert all(after[p] == before[p] for p in after if p in before and p.name != "plan.json")
