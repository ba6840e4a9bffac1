"""Hi-End-MAE pre-training: the model, its loss, validation loss, reconstruction previews and the
segmentation probe (``probe``: :mod:`hiend_train.probing`).

``run(PretrainConfig(cache=..., out=..., preset="tiny", epochs=...))`` trains a
:class:`hiend_model.HiEndMAE` on crops of an (unlabelled or labelled) cache with the paper's recipe.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from hiend_data.errors import InputError

from .config import PretrainConfig
from .data import case_error, check_finite, device_augment, make_train_loader, sampler_config
from .dist import all_sum
from .precision import autocast
from .preview import write_preview
from .probing import make_pretrain_probe
from .progress import optimizer_steps_per_epoch
from .runner import Context, RunResult, execute, wrap_ddp
from .task import Batch, LossFn, Task

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hiend_data.sampling import SamplerConfig
    from hiend_data.torch import CropDataset
    from hiend_model import HiEndMAE

#: epoch key of the fixed crops used for validation and previews (never a training epoch)
FIXED_EPOCH = 1 << 30


def make_loss(aug_cfg: SamplerConfig | None = None) -> LossFn:
    """The masked-patch loss of a batch; with ``aug_cfg`` the crops are augmented on the device first
    (``augment_on="gpu"``, :func:`hiend_train.data.device_augment`)."""

    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(iter(_params(model))).device
        images, _ = device_augment(aug_cfg, batch["image"].to(device, non_blocking=True))
        return model(images).loss, {}

    return loss


_loss = make_loss()


def _params(model: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    return (model.module if hasattr(model, "module") else model).parameters()


def fixed_batch(
    dataset: CropDataset, index: int, seed: int, num_patches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of case ``index`` and masking noise that stay the same every epoch: images
    [N, C, *crop], noise [N, L]."""
    sampler = dataset.sampler
    images, _ = sampler.sample_batch(index, sampler.rng(FIXED_EPOCH, index))
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    noise = torch.rand(images.shape[0], num_patches, generator=g)
    return torch.from_numpy(images.copy()), noise


@torch.no_grad()
def validation_loss(ctx: Context, model: HiEndMAE, dataset: CropDataset) -> float | None:
    """Mean masked-patch loss over the validation cases' fixed crops and noise (all ranks), or None."""
    env = ctx.env
    mine = ctx.val_idx[env.rank :: env.world]
    total = torch.zeros(2, dtype=torch.float64, device=env.device)
    was_training = model.training
    model.eval()
    for idx in mine:
        name = ctx.cache.cases[idx]
        try:
            images, noise = fixed_batch(dataset, idx, ctx.cfg.seed, model.num_patches)
        except InputError as exc:  # the sampler's message names no case
            raise InputError(case_error(ctx.cache.root, name, exc, "validation")) from None
        check_finite(images, [name] * images.shape[0], ctx.cache.root, "validation")
        with autocast(ctx.precision, env.device):
            loss = model(images.to(env.device), noise.to(env.device)).loss
        total[0] += float(loss) * images.shape[0]
        total[1] += images.shape[0]
    model.train(was_training)
    all_sum(env, total)
    return float(total[0] / total[1]) if total[1] > 0 else None


def build_task(ctx: Context) -> Task:
    """The pre-training model (``preset`` + ``model`` overrides) and its data on this process."""
    from hiend_model import HiEndMAE
    from hiend_model.config import resolve_config

    cfg: PretrainConfig = ctx.cfg  # type: ignore[assignment]
    env = ctx.env
    model = HiEndMAE(resolve_config(cfg.preset, **cfg.model)).to(env.device)
    crop = tuple(model.config.img_size)
    sampler_cfg = sampler_config(
        "pretrain", **{"crop_size": crop, "num_samples": cfg.num_samples, **cfg.sampler}
    )
    dataset, sampler, loader, aug_cfg = make_train_loader(cfg, ctx.cache, ctx.train_idx, env, sampler_cfg)
    warned: list[bool] = []

    def on_epoch_end(epoch: int) -> dict[str, Any]:
        done = epoch + 1
        last = done == cfg.epochs
        out: dict[str, Any] = {}
        if ctx.val_idx and (done % cfg.val_every == 0 or last):
            val = validation_loss(ctx, model, dataset)
            if val is not None:
                out.update(val_loss=val, score=-val)
        if env.main and cfg.preview_every and (done % cfg.preview_every == 0 or last):
            images, noise = fixed_batch(dataset, ctx.train_idx[0], cfg.seed, model.num_patches)
            path = ctx.run.previews / f"epoch_{done:04d}.png"
            written = write_preview(
                model, images[:1].to(env.device), noise[:1].to(env.device), path, title=f"epoch {done}"
            )
            if written is not None:  # for the sinks (TensorBoard shows it as an image)
                steps = done * optimizer_steps_per_epoch(len(loader), cfg.grad_accum)
                ctx.events.emit("preview", epoch=done, step=steps, path=str(written))
            if written is None and not warned:
                warned.append(True)
                ctx.run.log(
                    {
                        "event": "warning",
                        "message": "matplotlib is not installed (pip install "
                        "'hiend-train[preview]'): reconstruction previews are skipped",
                    }
                )
                print(
                    "note: matplotlib is not installed (pip install 'hiend-train[preview]'); "
                    "skipping reconstruction previews",
                    file=sys.stderr,
                )
        return out

    plan = ctx.cache.plan.model_copy(update={"crop_size": crop})
    tasks: list[Task] = []

    def save(path: Any, epoch: int, batch: int, step: int, extra: dict[str, Any]) -> None:
        from .checkpointing import save_weights

        save_weights(tasks[0], path, epoch, step, {"batch": batch, **extra})

    probe = make_pretrain_probe(cfg, model, env, ctx.precision, ctx.events, ctx.run, save)
    task = Task(
        stage="pretrain",
        model=model,
        ddp_model=wrap_ddp(model, env),
        loss_fn=make_loss(aug_cfg),
        loader=loader,
        sampler=sampler,
        dataset=dataset,
        plan=plan,
        on_epoch_end=on_epoch_end,
        cache=ctx.cache,
        on_step=probe,
    )
    tasks.append(task)
    return task


def run(cfg: PretrainConfig, resume: bool = False) -> RunResult:
    """Pre-train (or ``resume``) as ``cfg`` says; returns the run's result (rank 0 wrote its files)."""
    return execute(cfg, resume, build_task)
