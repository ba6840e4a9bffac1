"""On a CUDA device (``pytest -m gpu``): mixed precision pre-training and fine-tuning runs, and each
step on the GPU against the same step on the CPU in fp32 (:mod:`hiend_train.parity`, the bounds that
``tests/test_parity.py`` shows catch a loss 5 % off or gradients 20 % off)."""

from __future__ import annotations

import math

import pytest
import torch

from hiend_train import finetune, pretrain
from hiend_train.parity import compare_to_reference, tiny_case
from hiend_train.rundir import RunDir

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_mixed_precision_pretraining_on_cuda(tiny, precision):
    cfg = tiny(
        "pretrain",
        device="cuda",
        precision=precision,
        epochs=3,
        workers=2,
        val_fraction=0.2,
        val_every=1,
        preview_every=3,
    )
    result = pretrain.run(cfg)
    run = RunDir(cfg.out)
    setup = next(r for r in run.read_log() if r["event"] == "setup")
    assert setup["precision"] == ("bf16" if precision == "auto" else "fp16")
    assert setup["device"] == "cuda:0"
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["val_loss"]) for r in result.fit.history)
    # the run's numbers are a training run's; whether a step computes the right thing is the next test
    state = torch.load(run.state_path, weights_only=True)
    assert bool(state["scaler"]) is (precision == "fp16")  # the grad scaler's state only for fp16
    assert (run.previews / "epoch_0003.png").is_file()


def test_bf16_finetuning_with_sliding_window_validation_on_cuda(tiny):
    cfg = tiny(
        "finetune",
        device="cuda",
        epochs=3,
        workers=2,
        val_fraction=0.2,
        val_every=1,
        lr=3e-3,
        num_samples=4,
        batch_size=1,
    )
    result = finetune.run(cfg)
    assert all(math.isfinite(r["val_dice"]) for r in result.fit.history)
    assert result.fit.history[-1]["loss"] < result.fit.history[0]["loss"]
    assert (RunDir(cfg.out).best).is_file()


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_step_matches_the_cpu_fp32_step(kind, precision):
    model, loss_fn, batch = tiny_case(kind)
    result = compare_to_reference(model, loss_fn, batch, "cuda", precision)
    assert result.within(), result.summary()
