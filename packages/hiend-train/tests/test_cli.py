"""The command line: fast --help, one-line errors with exit code 2, a run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hiend_train.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_help_does_not_import_torch():
    code = "import sys; from hiend_train.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    res = invoke("finetune", "--help")
    assert res.exit_code == 0 and "--init" in res.output and "--resume" in res.output


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        (
            {"bad.toml": "epochz = 3\n"},
            ["pretrain", "bad.toml", "--cache", "{tmp}", "--out", "{tmp}/r"],
            "bad.toml: epochz: unknown field",
        ),
        ({"bad.json": "{"}, ["finetune", "bad.json", "--out", "{tmp}/r"], "bad.json: not valid JSON"),
        ({}, ["pretrain", "missing.toml", "--out", "{tmp}/r"], "missing.toml: config file not found"),
        ({}, ["pretrain", "--cache", "{tmp}/nocache", "--out", "{tmp}/r"], "nocache: cache folder not found"),
        ({}, ["pretrain", "--cache", "{tmp}", "--out", "{tmp}/r"], "not a hiend-data cache (no plan.json"),
        ({}, ["pretrain", "--out", "{tmp}/r"], "no cache given"),
        (
            {},
            ["pretrain", "--cache", "{cache}", "--out", "{tmp}/r", "--precision", "fp16", "--device", "cpu"],
            "precision fp16 needs CUDA",
        ),
        (
            {},
            ["pretrain", "--cache", "{cache}", "--out", "{tmp}/r", "--preset", "vit-xxl"],
            "unknown preset 'vit-xxl'",
        ),
        (
            {},
            ["pretrain", "--cache", "{cache}", "--out", "{tmp}/r", "--set", "epochs"],
            "expected FIELD=VALUE",
        ),
        (
            {},
            ["pretrain", "--cache", "{cache}", "--out", "{tmp}/r", "--set", "lr=-1"],
            "lr: Input should be greater than 0",
        ),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--init", "{tmp}/none.safetensors"],
            "none.safetensors: init checkpoint not found",
        ),
        ({}, ["pretrain", "--out", "{tmp}/r", "--resume"], "no cache given"),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--train-cases", "6"],
            "train_cases=6: the training split has 5 cases (6 in the cache, 1 held out",
        ),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--fold", "1"],
            "fold=1, folds=None: k-fold needs both",
        ),
        (
            {},
            [
                "finetune",
                "--cache",
                "{cache}",
                "--out",
                "{tmp}/r",
                "--fold",
                "1",
                "--folds",
                "3",
                "--val-fraction",
                "0.3",
            ],
            "fold=1 and val_fraction=0.3: with k-fold the fold is the validation set",
        ),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--fold", "0", "--folds", "7"],
            "folds=7: needs 2 <= folds <= the number of cases (6)",
        ),
        (
            {},
            [
                "finetune",
                "--cache",
                "{cache}",
                "--out",
                "{tmp}/r",
                "--freeze-encoder",
                "--encoder-lr-scale",
                "0.5",
            ],
            "freeze_encoder: the frozen encoder has no learning rate",
        ),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--layer-decay", "1.5"],
            "layer_decay: Input should be less than or equal to 1",
        ),
        (
            {"ds.json": '{"labels": {"background": 0, "liver": 1, "tumour": 9}}'},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--labels", "{tmp}/ds.json"],
            "ds.json: names label 9 ('tumour') but the model has num_classes=7",
        ),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--labels", "{tmp}/none.json"],
            "none.json",
        ),
        (  # a misspelt sampler field: one line with the known ones (was a 96-line traceback, exit 1)
            {},
            ["pretrain", "--cache", "{cache}", "--out", "{tmp}/r", "--set", "sampler.flip_axis=[1]"],
            "sampler: flip_axis: unknown field (known: ",
        ),
        (
            {},
            ["finetune", "--cache", "{cache}", "--out", "{tmp}/r", "--set", "sampler.rot90_prob=2"],
            "sampler: rot90_prob: Input should be less than or equal to 1",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, phantom_cache, monkeypatch, files, args, message):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [a.format(tmp=tmp_path, cache=phantom_cache) for a in args]
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "r").exists()  # nothing written


@pytest.mark.slow
def test_pretrain_then_finetune_from_it(tmp_path, phantom_cache):
    cfg = tmp_path / "pre.toml"
    cfg.write_text(
        'preset = "tiny"\nworkers = 0\nepochs = 1\nnum_samples = 2\npreview_every = 0\n'
        "[model]\nimg_size = 32\ndepth = 4\nembed_dim = 48\ndecoder_embed_dim = 24\n"
    )
    res = invoke(
        "pretrain",
        str(cfg),
        "--cache",
        str(phantom_cache),
        "--out",
        str(tmp_path / "pre"),
        "-q",
        "--epochs",
        "2",
        "--seed",
        "3",
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["steps"] == 6
    saved = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert (saved["epochs"], saved["seed"], saved["model"]["depth"]) == (2, 3, 4)  # flags over the file
    res = invoke(
        "finetune",
        "--cache",
        str(phantom_cache),
        "--out",
        str(tmp_path / "ft"),
        "-q",
        "--init",
        str(tmp_path / "pre" / "last.safetensors"),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--num-samples",
        "1",
        "--feature-size",
        "4",
        "--val-fraction",
        "0.2",
        "--batch-size",
        "3",
    )
    assert res.exit_code == 0, res.output
    from hiend_model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(tmp_path / "ft" / "best.safetensors", expected_kind="unetr")
    assert info.config["num_classes"] == 7 and info.config["depth"] == 4
    assert info.extra["init"] == str(tmp_path / "pre" / "last.safetensors")


def test_a_non_finite_loss_is_one_line_and_its_own_exit_code(tmp_path, phantom_cache):
    """Not bad input (2) and not a bug (1): exit 3, one line saying what to change."""
    res = invoke(
        "pretrain", "--cache", str(phantom_cache), "--out", str(tmp_path / "r"), "-q", "--preset", "tiny",
        "--set", "model.img_size=32", "--set", "model.depth=4", "--set", "model.embed_dim=48",
        "--set", "model.decoder_embed_dim=24", "--workers", "0", "--device", "cpu", "--epochs", "1",
        "--num-samples", "2", "--preview-every", "0", "--lr", "1e30", "--warmup-epochs", "0",
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss ("), res.stderr
    assert "lower lr" in lines[0] and "Traceback" not in res.output
