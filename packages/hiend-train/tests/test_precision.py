"""The numerics of a step (hiend_train.precision): the gradient norm, optimizer_step, precision and seeds."""

from __future__ import annotations

import pytest
import torch

from hiend_data.errors import InputError
from hiend_train import precision


def test_grad_norm_matches_clip_grad_norm():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net(torch.randn(5, 4)).square().sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    assert torch.allclose(precision.grad_norm(net.parameters()), expected)
    assert float(precision.grad_norm(torch.nn.Linear(2, 2).parameters())) == 0.0


def test_optimizer_step_accumulates_then_steps_and_returns_the_norm_before_clipping():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.weight.detach().clone()
    x = torch.randn(3, 4)
    assert (
        precision.optimizer_step(
            net(x).square().sum(), opt, None, net.parameters(), grad_accum=2, update=False
        )
        is None
    )
    assert torch.equal(net.weight, before) and net.weight.grad is not None  # accumulated, not applied
    grads = [p.grad.clone() for p in net.parameters()]
    norm = precision.optimizer_step(
        net(x).square().sum(), opt, None, net.parameters(), grad_accum=2, update=True, clip_grad=1e-3
    )
    # the two halves of the accumulation sum to the whole gradient: twice the first one
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(2 * g) for g in grads]))
    assert torch.allclose(norm, expected) and float(norm) > 1e-3  # the norm before clipping
    assert all(p.grad is None for p in net.parameters())  # zeroed after the step
    step = torch.linalg.vector_norm((net.weight.detach() - before).flatten())
    assert float(step) <= 0.1 * 1e-3 + 1e-9  # lr x the clipped norm bounds the weight change


def test_precision_and_seeds():
    cpu = torch.device("cpu")
    assert precision.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(InputError, match="fp16 needs CUDA"):
        precision.resolve_precision("fp16", cpu)
    assert precision.make_scaler("bf16") is None
    seeds = {precision.step_seed(0, s, r) for s in range(3) for r in range(2)}
    assert len(seeds) == 6 and precision.step_seed(0, 1, 1) == precision.step_seed(0, 1, 1)
    assert precision.epoch_seed(0, 1, 0) != precision.step_seed(0, 1, 0)
