"""Whole-scan segmentation: case discovery, geometry on the real scans, files in and out."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from hiend_data import Plan, load_volume
from hiend_data.errors import InputError
from hiend_model.checkpoint import save_checkpoint
from hiend_model.predict import collect_cases, predict_files, predict_volume
from hiend_model.window import WindowSettings

BODY = "ct/body_ct_3mm_ras_30slices.nii.gz"
ABDOMEN = "ct/abdomen_ct_1.5mm_lps.nii.gz"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ------------------------------------------------------------------------------------ discovery


def test_predict_collects_cases_by_hiend_datas_one_rule():
    """predict's input discovery is hiend_data.discovery.collect_cases (tested there: channels, the
    folder rule, every refusal), not a copy of it."""
    from hiend_data import discovery

    assert collect_cases is discovery.collect_cases


# ------------------------------------------------------------------------------------- geometry


class Threshold(torch.nn.Module):
    """Stand-in segmenter: class 1 where the preprocessed intensity exceeds ``t`` (no weights)."""

    def __init__(self, t: float, roi: int = 32) -> None:
        super().__init__()
        self.t = t
        self.config = SimpleNamespace(img_size=(roi,) * 3, in_chans=1, num_classes=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x - self.t], dim=1)


@pytest.mark.parametrize("scan", [BODY, ABDOMEN])
def test_prediction_lands_on_the_original_grid(shared_data: Path, scan: str):
    """Thresholding in preprocessed space, restored, equals thresholding the original HU (boundaries aside)."""
    vol = load_volume(shared_data / scan)
    plan = Plan.paper()  # RAS, 1.5 mm: the LPS scan is flipped, the 3 mm scan resampled, both cropped
    hu = 0.0
    t = (hu - plan.window[0]) / (plan.window[1] - plan.window[0])
    pred = predict_volume(Threshold(t).eval(), vol, plan, WindowSettings(sw_batch_size=8))
    assert pred.shape == vol.array.shape and pred.dtype == np.uint8
    ref = vol.array > hu
    interior = ndimage.binary_erosion(ref, border_value=1) | ~ndimage.binary_dilation(ref)
    wrong = pred.astype(bool) != ref
    assert wrong[interior].mean() < 1e-3
    assert wrong.mean() < 0.08
    # The check has teeth: the same prediction mirrored along any axis is far off.
    for axis in range(3):
        assert (np.flip(pred, axis).astype(bool) != ref)[interior].mean() > 0.02


def test_predict_volume_checks_channels(shared_data: Path):
    vol = load_volume(shared_data / BODY)
    model = Threshold(0.5)
    model.config.in_chans = 2
    with pytest.raises(
        InputError, match=r"body_ct_3mm_ras_30slices.nii.gz: has 1 channel\(s\), the model takes 2"
    ):
        predict_volume(model, vol, Plan.paper())


# ---------------------------------------------------------------------------------------- files


def test_predict_files_on_real_scans(tmp_path: Path, shared_data: Path, unetr_ckpt: Path, unetr_model, tiny):
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(shared_data / BODY, inputs / "body_0000.nii.gz")  # nnU-Net channel name
    out = tmp_path / "out"
    written = predict_files(unetr_ckpt, [inputs, shared_data / ABDOMEN], out, progress=False, sw_batch_size=4)
    assert [p.name for p in written] == ["body.nii.gz", "abdomen_ct_1.5mm_lps.nii.gz"]
    assert sorted(os.listdir(out)) == sorted(p.name for p in written)
    for path, src in zip(written, [BODY, ABDOMEN], strict=False):
        img, ref = nib.load(path), nib.load(shared_data / src)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-6)
        assert np.issubdtype(img.get_data_dtype(), np.unsignedinteger)
        labels = np.asarray(img.dataobj)
        assert labels.max() < 3
        # Same numbers as the in-memory API with the checkpoint's plan.
        expect = predict_volume(
            unetr_model, load_volume(shared_data / src), tiny.plan(), WindowSettings(sw_batch_size=2)
        )
        np.testing.assert_array_equal(labels, expect)


def test_predict_files_multichannel(tmp_path: Path, shared_data: Path, tiny):
    model = tiny.unetr(in_chans=2)
    ckpt = save_checkpoint(tmp_path / "two.safetensors", model, plan=tiny.plan())
    for c in (0, 1):
        os.symlink(shared_data / BODY, tmp_path / f"pat_{c:04d}.nii.gz")
    [path] = predict_files(
        ckpt,
        [tmp_path / "pat_0000.nii.gz", tmp_path / "pat_0001.nii.gz"],
        tmp_path / "out",
        progress=False,
        sw_batch_size=4,
    )
    assert path.name == "pat.nii.gz"
    img = nib.load(path)
    assert img.shape == (122, 101, 30)
    np.testing.assert_allclose(img.affine, nib.load(shared_data / BODY).affine, atol=1e-6)


def test_bad_input_stops_before_any_output(tmp_path: Path, shared_data: Path, unetr_ckpt: Path):
    bad = tmp_path / "in" / "zz_broken.nii.gz"
    bad.parent.mkdir()
    os.symlink(shared_data / BODY, tmp_path / "in" / "aa_good.nii.gz")
    bad.write_bytes((shared_data / BODY).read_bytes()[:5000])  # truncated gzip
    out = tmp_path / "out"
    with pytest.raises(InputError, match="zz_broken.nii.gz"):
        predict_files(unetr_ckpt, [tmp_path / "in"], out, progress=False)
    assert not out.exists()


def test_refuses_mae_checkpoint_and_channel_mismatch(
    tmp_path: Path, shared_data: Path, mae_ckpt: Path, unetr_ckpt: Path
):
    with pytest.raises(InputError, match=r"expected a unetr checkpoint, got mae"):
        predict_files(mae_ckpt, [shared_data / BODY], tmp_path / "out", progress=False)
    for c in (0, 1):
        os.symlink(shared_data / BODY, tmp_path / f"two_{c:04d}.nii.gz")
    with pytest.raises(
        InputError, match=r"two_0000.nii.gz: case 'two' has 2 channel\(s\), the model takes 1"
    ):
        predict_files(unetr_ckpt, [tmp_path], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_an_input(tmp_path: Path, shared_data: Path, unetr_ckpt: Path):
    os.symlink(shared_data / BODY, tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match=r"would overwrite an input scan"):
        predict_files(unetr_ckpt, [tmp_path / "scan.nii.gz"], tmp_path, progress=False)


def test_checkpoint_without_plan(tmp_path: Path, shared_data: Path, unetr_model):
    ckpt = save_checkpoint(tmp_path / "noplan.safetensors", unetr_model)
    with pytest.raises(InputError, match=r"noplan.safetensors: checkpoint has no preprocessing plan"):
        predict_files(ckpt, [shared_data / BODY], tmp_path / "out", progress=False)


# --------------------------------------------------------------------- the window settings


def test_predict_files_takes_one_window_settings(tmp_path: Path, shared_data: Path, unetr_ckpt: Path):
    [a] = predict_files(unetr_ckpt, [shared_data / BODY], tmp_path / "a", progress=False, sw_batch_size=3)
    calls: list[tuple[int, int]] = []
    settings = WindowSettings(sw_batch_size=3, progress=lambda d, t: calls.append((d, t)))
    [b] = predict_files(unetr_ckpt, [shared_data / BODY], tmp_path / "b", progress=False, settings=settings)
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    assert calls and calls[-1][0] == calls[-1][1]  # the settings' callback ran (no bar asked for)
    with pytest.raises(TypeError, match=r"sw_batch_size given both directly and in settings"):
        predict_files(unetr_ckpt, [shared_data / BODY], tmp_path / "c", sw_batch_size=2, settings=settings)
    with pytest.raises(InputError, match=r"^--overlap 1.0:"):
        predict_files(unetr_ckpt, [shared_data / BODY], tmp_path / "c", overlap=1.0)
    assert not (tmp_path / "c").exists()


def test_predictor_keeps_its_settings(shared_data: Path, unetr_model, tiny):
    from hiend_model.predict import Predictor

    volume = load_volume(shared_data / BODY)
    predictor = Predictor(unetr_model, tiny.plan(), WindowSettings(sw_batch_size=2))
    assert predictor.settings.sw_batch_size == 2 and predictor.members == [unetr_model]
    calls: list[tuple[int, int]] = []
    labels = predictor.predict(volume, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(labels, predict_volume(unetr_model, volume, tiny.plan()))
    assert calls[-1][0] == calls[-1][1] and predictor.settings.progress is None


def test_predictor_from_checkpoints_loads_onto_the_settings_device(unetr_ckpt: Path, tiny):
    from hiend_model.predict import Predictor

    predictor = Predictor.from_checkpoints([unetr_ckpt, unetr_ckpt], tiny.plan())
    assert len(predictor.members) == 2 and predictor.settings == WindowSettings()
    assert {p.device.type for m in predictor.members for p in m.parameters()} == {"cpu"}
    assert predictor.in_chans == 1


def test_a_batch_log_gets_a_line_per_scan_with_timings(
    tmp_path: Path, shared_data: Path, unetr_ckpt: Path, capsys
):
    """stderr not a terminal (a batch job's log): the bar drew nothing until the end; now each written
    scan is one line with its stages' seconds and the ETA; with progress off, nothing."""
    import re

    (tmp_path / "a").mkdir()  # the same scan twice: two cases
    os.symlink(shared_data / BODY, tmp_path / "a" / "one.nii.gz")
    os.symlink(shared_data / BODY, tmp_path / "a" / "two.nii.gz")
    predict_files(unetr_ckpt, [tmp_path / "a"], tmp_path / "out", progress=True, sw_batch_size=4)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    pattern = r"\[(\d)/2\] (one|two): done in [\d.]+ s \(read [\d.]+ s, model [\d.]+ s, write [\d.]+ s\)"
    assert re.match(pattern + r"; about \d+ s left$", lines[0]) and lines[0].startswith("[1/2] one")
    assert re.match(pattern + "$", lines[1]) and lines[1].startswith("[2/2] two")
    predict_files(unetr_ckpt, [tmp_path / "a"], tmp_path / "out2", progress=False, sw_batch_size=4)
    assert capsys.readouterr().err == ""
