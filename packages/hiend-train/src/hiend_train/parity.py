"""How close a training step on an accelerator (or in mixed precision) is to the reference: the same
step, from the same weights on the same batch, on the CPU in fp32.

:func:`step_gradients` runs one micro-batch through :func:`hiend_train.loop.train_one_epoch` itself
(its autocast, its loss scaling, fp16's grad scaler and unscaling: :func:`hiend_train.precision.optimizer_step`) with an optimizer that only records
the gradients it is asked to apply: the loss and gradients of the loop's step, not of a re-implementation.
:func:`compare_to_reference` does that on a device and precision and on the CPU in fp32, and reports the
relative loss difference and the norm-wise relative difference of the whole gradient (every parameter's
gradient as one vector: ``||g - g_ref|| / ||g_ref||``), with each tensor's own figure for diagnosis. :data:`TOLERANCES` are the bounds that ``tests/test_gpu.py``,
``tests/test_parity.py`` and ``tools/gpu_check.py`` hold the steps to; :func:`tiny_case` makes their
model and batch (the tiny preset at 32^3 with seeded, smooth synthetic crops).

The numbers are measured at torch's default float settings (cuDNN convolutions may use TF32, matrix
products do not): those a run has.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hiend_model.mae import build
from hiend_model.unetr import UNETR

from .config import TrainConfig
from .dist import DistEnv
from .events import MultiSink
from .loop import Training, train_one_epoch
from .losses import dice_ce_loss
from .precision import make_scaler
from .rundir import RunDir
from .task import LossFn, Task

__all__ = ["TOLERANCES", "Tolerance", "StepParity", "step_gradients", "compare_to_reference", "tiny_case"]


@dataclass(frozen=True)
class Tolerance:
    """Bounds of one precision: relative loss difference, and norm-wise relative difference of the whole
    gradient (one vector of every parameter's gradient). Whole rather than per tensor: a tensor whose
    gradient is near zero (a LayerNorm weight of a block the loss barely sees) has a large relative
    error in any low precision without the step being wrong."""

    loss_rel: float
    grad_rel: float


#: fp32: rounding and TF32 convolutions (cuDNN's default; about 1e-3 relative per product), kernels
#: that sum in other orders. bf16: 8 mantissa bits (4e-3 per rounding) carried through the network;
#: fp16: 11 bits, with the grad scaler. Measured on the CPU (autocast, :func:`tiny_case` seeds 0, 1, 2):
#: loss difference <= 4e-5 (pretrain) / 1e-4 (finetune) in bf16, <= 2e-5 in fp16; whole-gradient
#: difference bf16 <= 0.010 / 0.086, fp16 <= 0.001 / 0.030. A loss 5 % off, or gradients 20 % off,
#: are outside every bound (``tests/test_parity.py``).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(loss_rel=1e-3, grad_rel=1e-2),
    "bf16": Tolerance(loss_rel=1e-2, grad_rel=0.15),
    "fp16": Tolerance(loss_rel=5e-3, grad_rel=0.06),
}


class _GradRecorder:
    """An optimizer that applies nothing: ``step()`` keeps a float32 CPU copy of every gradient."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]]) -> None:
        self.named = named
        self.param_groups = [{"params": [p for _, p in named], "lr": 0.0}]
        self.grads: dict[str, torch.Tensor] = {}

    def step(self) -> None:
        self.grads = {n: p.grad.detach().float().cpu().clone() for n, p in self.named if p.grad is not None}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named:
            p.grad = None


def step_gradients(
    model: torch.nn.Module, loss_fn: LossFn, batch: dict[str, Any], device: str | torch.device, precision: str
) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, {parameter name: gradient, float32 on the CPU}) of one training step of a copy of
    ``model`` on ``device`` under ``precision`` (``fp32``, ``bf16``, ``fp16``), through the loop."""
    device = torch.device(device)
    net = copy.deepcopy(model).to(device).train()
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    optimizer = _GradRecorder(named)
    scaler = make_scaler(precision, device.type)
    cfg = TrainConfig(
        epochs=1, warmup_epochs=0, lr=1.0, log_every=1 << 30, progress=False, device=str(device)
    )
    task = Task(
        stage="parity",
        model=net,
        ddp_model=net,
        loss_fn=loss_fn,
        loader=[batch],
        sampler=None,
        dataset=None,
        plan=None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp, writer=False)
        # fp16: a step whose scaled gradients overflow is skipped and the scale halved, as in a run
        for _ in range(1 if scaler is None else 32):
            optimizer.grads = {}
            t = Training(task, optimizer, scaler, cfg, DistEnv(device=device), run, precision, MultiSink())
            _, record = train_one_epoch(t, epoch=0, step=0)
            if optimizer.grads:
                break
    if len(optimizer.grads) != len(named):
        raise RuntimeError(f"the step gave {len(optimizer.grads)} gradients for {len(named)} parameters")
    return float(record["loss"]), optimizer.grads


@dataclass
class StepParity:
    """A step against its CPU fp32 reference (see the module)."""

    precision: str
    device: str
    loss: float
    loss_ref: float
    loss_rel: float
    grad_rel: float
    worst: str
    worst_rel: float
    per_tensor: dict[str, float] = field(default_factory=dict)

    def within(self, tol: Tolerance | None = None) -> bool:
        """Inside ``tol`` (default: :data:`TOLERANCES` of the precision)?"""
        tol = tol or TOLERANCES[self.precision]
        return self.loss_rel <= tol.loss_rel and self.grad_rel <= tol.grad_rel

    def summary(self) -> dict[str, Any]:
        """The numbers as a JSON-friendly dict (without the per-tensor ones)."""
        tol = TOLERANCES[self.precision]
        return {
            "precision": self.precision,
            "device": self.device,
            "loss": self.loss,
            "loss_ref": self.loss_ref,
            "loss_rel": self.loss_rel,
            "grad_rel": self.grad_rel,
            "worst_tensor": self.worst,
            "worst_tensor_rel": self.worst_rel,
            "tol_loss_rel": tol.loss_rel,
            "tol_grad_rel": tol.grad_rel,
            "within": self.within(),
        }


def compare_to_reference(
    model: torch.nn.Module, loss_fn: LossFn, batch: dict[str, Any], device: str | torch.device, precision: str
) -> StepParity:
    """One step of ``model`` (its current weights) on ``batch`` on ``device`` under ``precision``,
    against the same step on the CPU in fp32."""
    loss_ref, ref = step_gradients(model, loss_fn, batch, "cpu", "fp32")
    loss, got = step_gradients(model, loss_fn, batch, device, precision)
    per_tensor = {}
    diff_sq = ref_sq = 0.0
    for name, g_ref in ref.items():
        scale = float(g_ref.norm())
        diff = float((got[name] - g_ref).norm())
        per_tensor[name] = _rel(diff, scale)
        diff_sq, ref_sq = diff_sq + diff**2, ref_sq + scale**2
    worst = max(per_tensor, key=per_tensor.__getitem__)
    return StepParity(
        precision=precision,
        device=str(device),
        loss=loss,
        loss_ref=loss_ref,
        loss_rel=abs(loss - loss_ref) / max(abs(loss_ref), 1e-12),
        grad_rel=_rel(math.sqrt(diff_sq), math.sqrt(ref_sq)),
        worst=worst,
        worst_rel=per_tensor[worst],
        per_tensor=per_tensor,
    )


def _rel(diff: float, scale: float) -> float:
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


#: the tiny model of the parity checks (the tests' TINY_MODEL)
TINY: dict[str, Any] = dict(
    img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, decoder_embed_dim=24, decoder_num_heads=4
)


def _smooth(generator: torch.Generator, shape: tuple[int, ...], size: int) -> torch.Tensor:
    """Seeded noise at 1/4 resolution, upsampled: blob-like crops rather than white noise."""
    coarse = torch.randn(*shape[:2], size // 4, size // 4, size // 4, generator=generator)
    return F.interpolate(coarse, size=(size, size, size), mode="trilinear", align_corners=False)


def tiny_case(
    kind: str, seed: int = 0, batch: int = 4, num_classes: int = 4
) -> tuple[torch.nn.Module, LossFn, dict[str, Any]]:
    """(model, loss_fn, batch) of a ``pretrain`` (Hi-End-MAE, masked-patch loss with fixed noise) or
    ``finetune`` (UNETR, the Dice + CE loss of fine-tuning) step of the tiny model on seeded crops."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mae = build("tiny", **TINY)
    size = TINY["img_size"]
    images = _smooth(g, (batch, 1), size)
    if kind == "pretrain":
        noise = torch.rand(batch, mae.num_patches, generator=g)

        def mae_loss(net: Any, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
            dev = next(net.parameters()).device
            return net(b["image"].to(dev), b["noise"].to(dev)).loss, {}

        return mae, mae_loss, {"image": images, "noise": noise}
    if kind != "finetune":
        raise ValueError(f"kind {kind!r}: expected pretrain or finetune")
    field_ = _smooth(g, (batch, 1), size)[:, 0]
    edges = torch.quantile(field_.flatten(), torch.linspace(0, 1, num_classes + 1)[1:-1])
    labels = torch.bucketize(field_, edges)  # num_classes regions of about equal size
    model = UNETR.from_mae(mae, num_classes=num_classes, feature_size=4)

    def unetr_loss(net: Any, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        dev = next(net.parameters()).device
        return dice_ce_loss(net(b["image"].to(dev)), b["label"].to(dev).long()), {}

    return model, unetr_loss, {"image": images, "label": labels}
