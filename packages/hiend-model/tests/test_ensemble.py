"""Ensembles of UNETR checkpoints: mean softmax probabilities, one member = the single model, refusals."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hiend_data import Plan, load_volume, preprocess_case, restore_label
from hiend_data.errors import InputError
from hiend_model.checkpoint import read_checkpoint_info, save_checkpoint
from hiend_model.cli import app
from hiend_model.ensemble import check_ensemble, ensemble_probabilities, label_differences, plan_differences
from hiend_model.inference import argmax_labels, sliding_window_logits
from hiend_model.predict import predict_ensemble, predict_files, predict_volume
from hiend_model.window import WindowSettings

SW2 = WindowSettings(sw_batch_size=2)

BODY = "ct/body_ct_3mm_ras_30slices.nii.gz"


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(r, *fragments: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _reference(models, volume, plan):
    """Each member's sliding-window logits computed on their own, softmaxed, averaged; argmax restored."""
    pre = preprocess_case(volume, plan)
    image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))
    probs = [
        torch.softmax(sliding_window_logits(m, image, m.config.img_size, 0.5, 2, out_device="cpu"), 0)
        for m in models
    ]
    mean = torch.stack(probs).mean(0)
    labels = np.asarray(restore_label(argmax_labels(mean, np.uint8), pre.record))
    return probs, mean, labels


# ------------------------------------------------------------------------------ one member


def test_single_member_ensemble_is_the_single_model(
    tmp_path: Path, shared_data: Path, unetr_ckpt: Path, unetr_model, tiny
):
    volume = load_volume(shared_data / BODY)
    plan = tiny.plan()
    # Today's single-model path spelled out: preprocess -> logits -> argmax of the logits -> restore.
    pre = preprocess_case(volume, plan)
    image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))
    logits = sliding_window_logits(unetr_model, image, unetr_model.config.img_size, 0.5, 2, out_device="cpu")
    today = np.asarray(restore_label(argmax_labels(logits, np.uint8), pre.record))
    assert len(np.unique(today)) > 1
    np.testing.assert_array_equal(predict_ensemble([unetr_model], volume, plan, SW2), today)
    np.testing.assert_array_equal(predict_volume(unetr_model, volume, plan, SW2), today)
    labels, probs = predict_ensemble([unetr_model], volume, plan, SW2, return_probabilities=True)
    np.testing.assert_array_equal(labels, today)
    torch.testing.assert_close(probs, torch.softmax(logits, 0), rtol=0, atol=1e-6)

    [one] = predict_files(
        [unetr_ckpt], [shared_data / BODY], tmp_path / "list", progress=False, sw_batch_size=2
    )
    [plain] = predict_files(
        unetr_ckpt, [shared_data / BODY], tmp_path / "plain", progress=False, sw_batch_size=2
    )
    np.testing.assert_array_equal(np.asarray(nib.load(one).dataobj), today)
    np.testing.assert_array_equal(np.asarray(nib.load(plain).dataobj), today)


# ---------------------------------------------------------------------------- two members


def test_two_members_average_their_probabilities(tmp_path: Path, shared_data: Path, tiny):
    plan = tiny.plan()
    models = [tiny.unetr(seed=0), tiny.unetr(seed=7)]
    ckpts = [save_checkpoint(tmp_path / f"fold{i}.safetensors", m, plan=plan) for i, m in enumerate(models)]
    volume = load_volume(shared_data / BODY)
    probs, mean, expect = _reference(models, volume, plan)

    labels, got = predict_ensemble(models, volume, plan, SW2, return_probabilities=True)
    assert got.dtype == torch.float32 and got.shape == mean.shape
    torch.testing.assert_close(got, mean, rtol=0, atol=1e-6)
    for p in probs:  # the mean is neither member
        assert (got - p).abs().max() > 1e-3
    np.testing.assert_array_equal(labels, expect)
    assert labels.shape == volume.array.shape and labels.dtype == np.uint8
    # The members disagree somewhere, and the ensemble is not just one of them.
    singles = [predict_volume(m, volume, plan, SW2) for m in models]
    assert (singles[0] != singles[1]).any()

    pre = preprocess_case(volume, plan)
    image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))
    calls: list[tuple[int, int]] = []
    direct = ensemble_probabilities(
        models, image, plan, WindowSettings(sw_batch_size=2, progress=lambda d, t: calls.append((d, t)))
    )
    torch.testing.assert_close(direct, mean, rtol=0, atol=1e-6)
    assert calls[-1][0] == calls[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    assert len({t for _, t in calls}) == 1  # equal windows per member: one total throughout

    [path] = predict_files(ckpts, [shared_data / BODY], tmp_path / "out", progress=False, sw_batch_size=2)
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, nib.load(shared_data / BODY).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expect)

    out = tmp_path / "cli"
    r = run("predict", *ckpts, shared_data / BODY, "--out", out, "--sw-batch", 2, "--quiet")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out / "body_ct_3mm_ras_30slices.nii.gz")
    written = nib.load(out / "body_ct_3mm_ras_30slices.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expect)


def test_members_with_different_windows(tmp_path: Path, shared_data: Path, tiny):
    """Each member slides its own window (img_size); the plans differ only in crop_size: allowed."""
    piece = tmp_path / "piece.nii.gz"
    nib.save(nib.load(shared_data / BODY).slicer[20:100, 20:90, :], piece)
    a, b = tiny.unetr(seed=1), tiny.unetr(seed=2, img_size=48)
    ca = save_checkpoint(tmp_path / "a.safetensors", a, plan=tiny.plan())
    plan48 = Plan(spacing=(3.0, 3.0, 3.0), crop_size=(48, 48, 48))
    cb = save_checkpoint(tmp_path / "b.safetensors", b, plan=plan48)
    _, _, expect = _reference([a, b], load_volume(piece), tiny.plan())
    [path] = predict_files([ca, cb], [piece], tmp_path / "out", progress=False, sw_batch_size=2)
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), expect)


# ------------------------------------------------------------------------------- refusals


def test_mismatched_num_classes(tmp_path: Path, shared_data: Path, tiny):
    c3 = save_checkpoint(tmp_path / "three.safetensors", tiny.unetr(num_classes=3), plan=tiny.plan())
    c4 = save_checkpoint(tmp_path / "four.safetensors", tiny.unetr(num_classes=4), plan=tiny.plan())
    out = tmp_path / "out"
    with pytest.raises(
        InputError,
        match=r"three.safetensors and .*four.safetensors cannot be ensembled: "
        r"num_classes 3 vs 4",
    ):
        predict_files([c3, c4], [shared_data / BODY], out, progress=False)
    assert not out.exists()
    _one_line_error(
        run("predict", c3, c4, shared_data / BODY, "--out", out), str(c3), str(c4), "num_classes 3 vs 4"
    )
    assert not out.exists()
    with pytest.raises(InputError, match=r"ensemble members 1 and 2 cannot be averaged: num_classes 3 vs 4"):
        predict_ensemble(
            [tiny.unetr(num_classes=3), tiny.unetr(num_classes=4)],
            load_volume(shared_data / BODY),
            tiny.plan(),
        )


def test_mismatched_plan_spacing(tmp_path: Path, shared_data: Path, tiny):
    model = tiny.unetr()
    c3 = save_checkpoint(tmp_path / "mm3.safetensors", model, plan=tiny.plan())
    c2 = save_checkpoint(
        tmp_path / "mm2.safetensors", model, plan=Plan(spacing=(2.0, 2.0, 2.0), crop_size=(32, 32, 32))
    )
    out = tmp_path / "out"
    with pytest.raises(
        InputError,
        match=r"mm3.safetensors and .*mm2.safetensors cannot be ensembled: "
        r"plan spacing \[3.0, 3.0, 3.0\] vs \[2.0, 2.0, 2.0\]",
    ):
        predict_files([c3, c2], [shared_data / BODY], out, progress=False)
    assert not out.exists()
    _one_line_error(
        run("predict", c3, c2, shared_data / BODY, "--out", out),
        str(c3),
        str(c2),
        "plan spacing [3.0, 3.0, 3.0] vs [2.0, 2.0, 2.0]",
    )
    assert not out.exists()


def test_mismatched_in_chans_and_missing_plan(tmp_path: Path, tiny):
    one = save_checkpoint(tmp_path / "one.safetensors", tiny.unetr(), plan=tiny.plan())
    two = save_checkpoint(tmp_path / "two.safetensors", tiny.unetr(in_chans=2), plan=tiny.plan())
    bare = save_checkpoint(tmp_path / "bare.safetensors", tiny.unetr())
    infos = [read_checkpoint_info(p) for p in (one, two)]
    with pytest.raises(
        InputError,
        match=r"one.safetensors and .*two.safetensors cannot be ensembled: "
        r"in_chans 1 vs 2",
    ):
        check_ensemble(infos)
    with pytest.raises(InputError, match=r"bare.safetensors: checkpoint has no preprocessing plan"):
        check_ensemble([infos[0], read_checkpoint_info(bare)])


def test_plan_differences():
    base = Plan(spacing=(3.0, 3.0, 3.0), crop_size=(32, 32, 32))
    assert plan_differences(base, Plan(spacing=(3.0, 3.0, 3.0), crop_size=(64, 64, 64))) == []
    assert plan_differences(
        base, Plan(orientation="LPS", spacing=(3.0, 3.0, 3.0), window=(-100, 200), crop_to_foreground=False)
    ) == [
        "plan orientation 'RAS' vs 'LPS'",
        "plan window [-175.0, 250.0] vs [-100.0, 200.0]",
        "plan crop_to_foreground True vs False",
    ]
    mri = Plan(modality="mri", spacing=(3.0, 3.0, 3.0))
    assert plan_differences(mri, Plan(modality="mri", spacing=(3.0, 3.0, 3.0), window=(0, 1))) == []
    assert plan_differences(base, mri) == ["plan modality 'ct' vs 'mri'"]


# --------------------------------------------------------------------------- command line


def test_cli_ensemble_usage_errors(tmp_path: Path, shared_data: Path, unetr_ckpt: Path):
    out = tmp_path / "out"
    _one_line_error(run("predict", unetr_ckpt, unetr_ckpt, "--out", out), "no input scans given")
    _one_line_error(
        run("predict", unetr_ckpt, shared_data / BODY, unetr_ckpt, "--out", out),
        "a checkpoint after the first input",
    )
    _one_line_error(
        run("predict", unetr_ckpt, tmp_path / "absent.safetensors", shared_data / BODY, "--out", out),
        "absent.safetensors",
    )
    assert not out.exists()


def test_label_differences():
    a = {1: "liver", 2: "spine"}
    assert label_differences(a, dict(a)) == []
    assert label_differences(a, None) == [] and label_differences(None, a) == []  # no names: no claim
    assert label_differences(a, {1: "spine", 2: "liver"}) == ["label 1 'liver' vs 'spine'"]
    assert label_differences(a, {1: "liver", 2: "spleen"}) == ["label 2 'spine' vs 'spleen'"]
    assert label_differences(a, {1: "liver"}) == ["label 2 'spine' vs none"]
    assert label_differences({1: "liver"}, {1: "liver", 3: "kidney"}) == ["label 3 none vs 'kidney'"]


def test_members_with_swapped_label_names(tmp_path: Path, tiny):
    model = tiny.unetr()
    a = save_checkpoint(tmp_path / "a.safetensors", model, plan=tiny.plan(), extra={"labels": {"1": "liver", "2": "spine"}})  # fmt: skip
    b = save_checkpoint(tmp_path / "b.safetensors", model, plan=tiny.plan(), extra={"labels": {"1": "spine", "2": "liver"}})  # fmt: skip
    unnamed = save_checkpoint(tmp_path / "c.safetensors", model, plan=tiny.plan())
    infos = [read_checkpoint_info(p) for p in (a, b)]
    with pytest.raises(InputError, match=r"a.safetensors and .*b.safetensors cannot be ensembled: label 1 'liver' vs 'spine'$"):  # fmt: skip
        check_ensemble(infos)
    check_ensemble([read_checkpoint_info(a), read_checkpoint_info(unnamed)])
    check_ensemble([read_checkpoint_info(a), read_checkpoint_info(a)])
