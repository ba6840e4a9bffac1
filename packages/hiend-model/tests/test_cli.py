"""hiend-model predict / info / convert: chained on tiny models, and exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hiend_data import Plan, load_volume
from hiend_data.errors import InputError
from hiend_model.checkpoint import load_checkpoint
from hiend_model.cli import app, keep_largest_values, split_checkpoint_args
from hiend_model.official import export_official_finetuned, export_official_pretrained
from hiend_model.predict import predict_volume
from hiend_model.window import WindowSettings

BODY = "ct/body_ct_3mm_ras_30slices.nii.gz"


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_help_does_not_import_torch():
    code = "import sys, hiend_model.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_command(tmp_path: Path, shared_data: Path, unetr_ckpt: Path, unetr_model, tiny):
    out = tmp_path / "out"
    r = run("predict", unetr_ckpt, shared_data / BODY, "--out", out, "--sw-batch", 4, "--quiet")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out / "body_ct_3mm_ras_30slices.nii.gz")
    img = nib.load(out / "body_ct_3mm_ras_30slices.nii.gz")
    ref = nib.load(shared_data / BODY)
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-6)
    expect = predict_volume(
        unetr_model, load_volume(shared_data / BODY), tiny.plan(), WindowSettings(sw_batch_size=4)
    )
    np.testing.assert_array_equal(np.asarray(img.dataobj), expect)


def test_info(unetr_ckpt: Path, unetr_model, tiny):
    r = run("info", unetr_ckpt, "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["kind"] == "unetr"
    assert s["parameters"] == sum(p.numel() for p in unetr_model.parameters())
    assert sum(s["parameters_by_module"].values()) == s["parameters"]
    assert s["parameters_by_module"]["encoder"] == sum(p.numel() for p in unetr_model.encoder.parameters())
    assert s["tensors"] == len(unetr_model.state_dict())
    assert Plan.model_validate(s["plan"]) == tiny.plan()
    assert s["config"]["num_classes"] == 3 and s["extra"] == {"note": "test"}
    assert s["versions"]["torch"] == torch.__version__
    text = run("info", unetr_ckpt)
    assert text.exit_code == 0
    assert "kind: unetr" in text.stdout and f"parameters: {s['parameters']:,}" in text.stdout
    assert "spacing: [3.0, 3.0, 3.0]" in text.stdout and "note: test" in text.stdout


def test_convert_finetuned_then_info_then_predict(tmp_path: Path, shared_data: Path, tiny):
    # The paper's fine-tuning keeps MONAI's LayerNorm eps 1e-5, which convert assumes.
    model = tiny.unetr(seed=3, layer_norm_eps=1e-5)
    pth = tmp_path / "paper_unetr.pth"
    torch.save(export_official_finetuned(model, wrap=True), pth)  # {"state_dict": {"module." + k: v}}
    dst = tmp_path / "ours.safetensors"
    r = run("convert", pth, dst, "--from", "official-finetune", "--num-heads", 2)
    assert r.exit_code == 0, r.stderr
    converted, info = load_checkpoint(dst, expected_kind="unetr")
    assert info.plan == Plan.paper()
    assert info.extra["source_format"] == "official-finetune" and info.extra["converted_from"] == str(pth)
    for key in ("embed_dim", "depth", "patch_size", "feature_size", "num_classes", "img_size", "num_heads"):
        assert info.config[key] == model.config.model_dump(mode="json")[key], key
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():  # the converted model runs the default attention backend: float32 rounding
        torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-5)

    s = json.loads(run("info", dst, "--json").stdout)
    assert s["extra"]["source_sha256"] and s["plan"]["spacing"] == [1.5, 1.5, 1.5]

    # A 40 x 40 x 30 piece of the real scan (its own affine) keeps the 1.5 mm plan's windows few.
    piece = tmp_path / "piece.nii.gz"
    nib.save(nib.load(shared_data / BODY).slicer[40:80, 30:70, :], piece)
    out = tmp_path / "pred"
    r = run("predict", dst, piece, "--out", out, "--sw-batch", 8, "--quiet")
    assert r.exit_code == 0, r.stderr
    pred = nib.load(out / "piece.nii.gz")
    assert pred.shape == (40, 40, 30)
    np.testing.assert_allclose(pred.affine, nib.load(piece).affine, atol=1e-6)
    expect = predict_volume(converted, load_volume(piece), Plan.paper(), WindowSettings(sw_batch_size=8))
    np.testing.assert_array_equal(np.asarray(pred.dataobj), expect)
    assert len(np.unique(expect)) > 1


def test_convert_pretrained(tmp_path: Path, tiny):
    mae = tiny.mae(seed=5)
    pth = tmp_path / "paper_mae.pth"
    torch.save(export_official_pretrained(mae, wrap=True), pth)
    dst = tmp_path / "mae.safetensors"
    r = run("convert", pth, dst, "--from", "official-pretrain", "--num-heads", 2, "--decoder-num-heads", 2)
    assert r.exit_code == 0, r.stderr
    converted, info = load_checkpoint(dst, expected_kind="mae")
    images, noise = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 8)
    with torch.no_grad():
        a, b = mae(images, noise=noise), converted(images, noise=noise)
    torch.testing.assert_close(b.pred, a.pred, rtol=0, atol=1e-6)
    assert info.plan == Plan.paper() and info.config["decoder_num_heads"] == 2


def test_convert_never_replaces_its_source_or_an_existing_file_unasked(tmp_path: Path, tiny):
    pth = tmp_path / "paper_mae.pth"
    torch.save(export_official_pretrained(tiny.mae(seed=5), wrap=True), pth)
    source = pth.read_bytes()
    args = ("--from", "official-pretrain", "--num-heads", 2, "--decoder-num-heads", 2)
    _one_line_error(run("convert", pth, pth, *args), "paper_mae.pth", "is the source checkpoint itself")
    _one_line_error(
        run("convert", pth, tmp_path / "." / "paper_mae.pth", *args, "--overwrite"), "source checkpoint"
    )
    assert pth.read_bytes() == source
    _one_line_error(run("convert", pth, tmp_path, *args), "is a folder")
    dst = tmp_path / "old.safetensors"
    dst.write_bytes(b"previous")
    _one_line_error(run("convert", pth, dst, *args), "old.safetensors", "exists", "--overwrite")
    assert dst.read_bytes() == b"previous"
    assert run("convert", pth, dst, *args, "--overwrite").exit_code == 0
    assert load_checkpoint(dst, expected_kind="mae")[1].extra["converted_from"] == str(pth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors", "paper_mae.pth"]


def _one_line_error(r, *fragments: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_bad_inputs_exit_2(tmp_path: Path, shared_data: Path, mae_ckpt: Path, unetr_ckpt: Path):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(2000))
    _one_line_error(run("info", noise), "noise.safetensors", "not a readable safetensors")
    _one_line_error(run("info", tmp_path / "none.safetensors"), "none.safetensors")
    _one_line_error(
        run("predict", mae_ckpt, shared_data / BODY, "--out", tmp_path / "o"),
        "expected a unetr checkpoint, got mae",
    )
    _one_line_error(
        run("predict", unetr_ckpt, tmp_path / "absent.nii.gz", "--out", tmp_path / "o"), "absent.nii.gz"
    )
    not_nifti = tmp_path / "scan.nii.gz"
    not_nifti.write_bytes(b"hello")
    _one_line_error(run("predict", unetr_ckpt, not_nifti, "--out", tmp_path / "o"), "scan.nii.gz")
    assert not (tmp_path / "o").exists()
    _one_line_error(
        run("convert", tmp_path / "absent.pth", tmp_path / "x.safetensors", "--from", "official-finetune"),
        "absent.pth",
    )
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    _one_line_error(
        run("convert", junk, tmp_path / "x.safetensors", "--from", "official-pretrain"), "junk.pth"
    )
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_gpu_exits_2(tmp_path: Path, shared_data: Path, unetr_ckpt: Path):
    _one_line_error(
        run("predict", unetr_ckpt, shared_data / BODY, "--out", tmp_path / "o", "--device", "cuda"),
        "CUDA is not available",
    )


def test_wrong_layout_for_convert_exits_2(tmp_path: Path, tiny):
    pth = tmp_path / "mae.pth"
    torch.save(export_official_pretrained(tiny.mae(), wrap=True), pth)
    r = run("convert", pth, tmp_path / "x.safetensors", "--from", "official-finetune")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_usage_errors_exit_2(unetr_ckpt: Path, tmp_path: Path):
    assert run("predict", unetr_ckpt, "x.nii.gz", "--out", tmp_path, "--overlap", 1.5).exit_code == 2
    assert run("convert", "a.pth", "b.safetensors", "--from", "timm").exit_code == 2


def test_bad_values_are_one_line_not_the_usage_box(unetr_ckpt: Path, tmp_path: Path):
    args = ("predict", unetr_ckpt, "x.nii.gz", "--out", tmp_path / "o")
    _one_line_error(
        run(*args, "--overlap", 1.5), "--overlap 1.5: expected a fraction of the window in [0, 1)"
    )
    _one_line_error(run(*args, "--overlap=x\x1b"), "--overlap 'x\\x1b':")
    _one_line_error(run(*args, "--sw-batch", "two"), "--sw-batch 'two':", "valid integer")
    _one_line_error(run(*args, "--nope"), "no such option: --nope")
    _one_line_error(run("nope"), "no such command 'nope'")
    _one_line_error(
        run("convert", "a.pth", "b.safetensors", "--from", "x"), "--from 'x':", "official-finetune"
    )
    missing = run("predict")  # nothing typed to show: click's message with the usage
    assert missing.exit_code == 2 and "Missing argument" in missing.stderr and "Usage" in missing.stderr


def test_given_value_of_an_option():
    from hiend_data.errors import _given

    assert _given(["a", "--overlap", "1", "--sw-batch=3"], ["--overlap"]) == "1"
    assert _given(["--sw-batch=3", "--sw-batch", "4"], ["--sw-batch"]) == "4"  # the last one counts
    assert _given(["-o", "x"], ["--out", "-o"]) == "x"
    assert _given(["--overlap"], ["--overlap"]) is None


def test_sigterm_and_sigint_stop_cleanly(tmp_path: Path, capsys):
    """SIGTERM raises in the main thread like Ctrl-C: the atomic writer removes its temporary, one line,
    exit 143; the previous SIGTERM handler is back afterwards."""
    import signal
    import time

    import typer

    from hiend_data.atomic import atomic_path
    from hiend_model.cli import stopped_by_signals

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as stop:
        with stopped_by_signals("predict"), atomic_path(tmp_path / "x.nii.gz") as tmp:
            tmp.write_bytes(b"half a label map")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # interrupted at once
    assert stop.value.exit_code == 143 and list(tmp_path.iterdir()) == []
    assert (
        capsys.readouterr().err
        == "error: predict terminated (SIGTERM); outputs already written are whole, no temporary file left\n"
    )
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(typer.Exit) as stop:
        with stopped_by_signals("predict"):
            raise KeyboardInterrupt
    assert stop.value.exit_code == 130 and "interrupted (SIGINT)" in capsys.readouterr().err


# ------------------------------------------------------------------ splitting the arguments


def test_split_checkpoint_args():
    assert split_checkpoint_args(["a.safetensors", "b.SAFETENSORS", "x.nii.gz", "dir"]) == (
        [Path("a.safetensors"), Path("b.SAFETENSORS")],
        [Path("x.nii.gz"), Path("dir")],
    )
    assert split_checkpoint_args(["model.bin", "x.nii"]) == ([Path("model.bin")], [Path("x.nii")])
    with pytest.raises(InputError, match=r"c.safetensors: a checkpoint after the first input x.nii.gz"):
        split_checkpoint_args(["a.safetensors", "x.nii.gz", "c.safetensors"])
    with pytest.raises(InputError, match=r"b.safetensors: no input scans given"):
        split_checkpoint_args(["a.safetensors", "b.safetensors"])


def test_keep_largest_text_becomes_label_values():
    assert keep_largest_values(" 1, 4") == [1, 4]
    assert keep_largest_values("all") == "all" and keep_largest_values("") == []
    with pytest.raises(InputError, match=r"^--keep-largest '1,x': 'x' is not a label value$"):
        keep_largest_values("1,x")
