"""A training step in low precision against the same step in fp32 (hiend_train.parity), on the CPU.

The GPU runs of ``test_gpu.py`` hold CUDA steps to the same bounds; here the bounds are shown to pass
for correct steps and to fail for steps that are wrong by little (a loss 5 % high, gradients 10 % high).
"""

from __future__ import annotations

import math

import pytest
import torch

from hiend_train.parity import TOLERANCES, StepParity, compare_to_reference, step_gradients, tiny_case


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_fp32_step_on_the_cpu_is_its_own_reference(kind):
    model, loss_fn, batch = tiny_case(kind)
    result = compare_to_reference(model, loss_fn, batch, "cpu", "fp32")
    assert result.loss_rel == 0.0 and result.grad_rel == 0.0
    assert math.isfinite(result.loss) and result.loss > 0
    assert len(result.per_tensor) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_stay_within_the_tolerances(kind, precision):
    model, loss_fn, batch = tiny_case(kind)
    result = compare_to_reference(model, loss_fn, batch, "cpu", precision)
    assert result.within(), result.summary()
    # autocast really ran: a low-precision step is not bit-identical to fp32
    assert result.grad_rel > 0


def test_the_steps_gradients_are_the_loss_gradients():
    # the recorded gradients are d(loss)/d(param) of the loop's step: compare with autograd directly
    model, loss_fn, batch = tiny_case("pretrain")
    loss, grads = step_gradients(model, loss_fn, batch, "cpu", "fp32")
    net = model.train()
    net.zero_grad()
    want, _ = loss_fn(net, batch)
    want.backward()
    assert loss == pytest.approx(float(want.detach()), rel=1e-6)
    for name, p in net.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-8)


def _wrong(loss_fn, loss_factor, grad_factor):
    """The step's loss with its value scaled by ``loss_factor`` and its gradients by ``grad_factor``."""

    def wrong(net, b):
        loss, metrics = loss_fn(net, b)
        return loss_factor * loss.detach() + grad_factor * (loss - loss.detach()), metrics

    return wrong


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(("loss_factor", "grad_factor"), [(1.05, 1.0), (1.0, 1.2), (1.0, 0.8)])
def test_a_step_a_little_wrong_is_caught(precision, loss_factor, grad_factor):
    # A loss 5 % high (its gradients right), or gradients 20 % off (the loss right): outside the bounds
    # of every precision, on the measure that is wrong and only on it.
    model, loss_fn, batch = tiny_case("pretrain")
    loss_ref, ref = step_gradients(model, loss_fn, batch, "cpu", "fp32")
    loss, got = step_gradients(model, _wrong(loss_fn, loss_factor, grad_factor), batch, "cpu", "fp32")
    diff = math.sqrt(sum(float((got[k] - ref[k]).norm()) ** 2 for k in ref))
    scale = math.sqrt(sum(float(g.norm()) ** 2 for g in ref.values()))
    result = StepParity(
        precision=precision,
        device="cpu",
        loss=loss,
        loss_ref=loss_ref,
        loss_rel=abs(loss - loss_ref) / loss_ref,
        grad_rel=diff / scale,
        worst="",
        worst_rel=0.0,
    )
    assert result.loss_rel == pytest.approx(loss_factor - 1, abs=1e-6)
    assert result.grad_rel == pytest.approx(abs(grad_factor - 1), abs=1e-5)
    tol = TOLERANCES[precision]
    assert (result.loss_rel > tol.loss_rel) is (loss_factor != 1.0)
    assert (result.grad_rel > tol.grad_rel) is (grad_factor != 1.0)
    assert not result.within(), result.summary()
