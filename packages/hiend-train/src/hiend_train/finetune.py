"""UNETR fine-tuning: the model (from a pre-trained encoder or a preset), Dice + cross-entropy, and
sliding-window validation by mean foreground Dice (best weights kept in ``RUN/best.safetensors``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiend_data.cache import LABELS_NAME, Cache
from hiend_data.errors import InputError
from hiend_data.labels import label_names_to_json, read_label_names
from hiend_model.checkpoint import load_checkpoint, read_checkpoint_info
from hiend_model.inference import sliding_window_logits
from hiend_model.kinds import UNETR_KIND
from hiend_model.mae import build
from hiend_model.pretrained import load_unetr_init
from hiend_model.unetr import UNETR

from .config import FinetuneConfig
from .data import check_finite, device_augment, make_train_loader, sampler_config
from .dist import all_sum
from .losses import dice_ce_loss, dice_counts, inverse_sqrt_weights, mean_dice
from .runner import Context, RunResult, execute, wrap_ddp
from .task import Batch, Task


def largest_label(cache: Cache) -> tuple[int, str | None]:
    """(the largest label value in the cache, a case holding it) from the cases' metadata (nothing is
    read from the label maps); InputError for an unlabelled case."""
    top, where = 0, None
    for name in cache.cases:
        case = cache.case(name)
        if case.label is None:
            raise InputError(
                f"{cache.root}: case {case.name!r} has no label; fine-tuning needs a labelled cache"
            )
        if case.classes and max(case.classes) > top:
            top, where = max(case.classes), case.name
    return top, where


def cache_num_classes(cache: Cache) -> int:
    """1 + the largest label value in the cache (InputError for an unlabelled cache)."""
    top, _ = largest_label(cache)
    if top < 1:
        raise InputError(f"{cache.root}: no case has a foreground label")
    return top + 1


def check_num_classes(cfg: FinetuneConfig, cache: Cache) -> int:
    """The run's class count: ``cfg.num_classes``, or 1 + the cache's largest label; InputError
    (before anything is written) when ``num_classes`` leaves out a label of the cache."""
    needed = cache_num_classes(cache)
    if cfg.num_classes is None:
        return needed
    if cfg.num_classes < needed:
        top, where = largest_label(cache)
        raise InputError(
            f"num_classes={cfg.num_classes}: the cache {cache.root} has label {top} (case {where!r}); "
            f"num_classes must be at least {needed} (background included)"
        )
    return cfg.num_classes


def run_label_names(cfg: FinetuneConfig, cache: Cache, num_classes: int) -> dict[int, str] | None:
    """The label names the run's checkpoints carry: ``cfg.labels`` (a dataset.json) or else the
    cache's (its labels.json, from the dataset.json it was preprocessed from); None when neither
    names any. InputError naming the file when it names a label value the model has no class for
    (above ``num_classes - 1``)."""
    if cfg.labels is not None:
        names, source = read_label_names(cfg.labels), Path(cfg.labels)
    else:
        names = getattr(cache, "label_names", None)
        source = Path(cache.root) / LABELS_NAME
    if not names:
        return None
    top = max(names)
    if top > num_classes - 1:
        raise InputError(
            f"{source}: names label {top} ({names[top]!r}) but the model has num_classes={num_classes} "
            f"(labels 0..{num_classes - 1}); set num_classes to {top + 1} or give labels a dataset.json "
            "that names only the trained labels"
        )
    return names


#: model fields that may be set when the weights come from an init checkpoint
INIT_MODEL_FIELDS = frozenset({"drop_path", "grad_checkpointing", "attn_backend"})
#: with the paper's pre-training .pth, the head counts its tensors cannot reveal
OFFICIAL_ARCH_FIELDS = frozenset({"num_heads", "decoder_num_heads"})


def build_model(cfg: FinetuneConfig, num_classes: int) -> UNETR:
    """The UNETR: from ``cfg.init`` (hiend mae -> new decoder, hiend unetr -> continued, the paper's
    pre-training .pth -> new decoder) or, without init, a randomly initialised ``preset`` encoder."""
    overrides = dict(cfg.model)
    if cfg.init is None:
        return UNETR.from_mae(
            build(cfg.preset, **overrides), num_classes=num_classes, feature_size=cfg.feature_size
        )
    init = Path(cfg.init)
    if not init.is_file():
        raise InputError(f"{init}: init checkpoint not found")
    official = init.suffix != ".safetensors"
    allowed = INIT_MODEL_FIELDS | (OFFICIAL_ARCH_FIELDS if official else frozenset())
    sizes = sorted(set(overrides) - allowed)
    if sizes:
        raise InputError(
            f"model.{sizes[0]}: with init the model's sizes come from {init}; only "
            f"{', '.join(sorted(allowed))} may be set"
        )
    if official:  # the paper's .pth: head counts are not in the tensors (default: the released ViT-L/12)
        arch = {k: v for k, v in overrides.items() if k in OFFICIAL_ARCH_FIELDS}
        runtime = {k: v for k, v in overrides.items() if k in INIT_MODEL_FIELDS}
        return load_unetr_init(
            init, num_classes=num_classes, feature_size=cfg.feature_size, arch=arch, **runtime
        )
    info = read_checkpoint_info(init)
    if info.kind == UNETR_KIND.name:
        model, _ = load_checkpoint(init, expected_kind=UNETR_KIND.name, config_overrides=overrides or None)
        if model.config.num_classes != num_classes:
            raise InputError(
                f"{init}: a UNETR with {model.config.num_classes} classes, the cache needs "
                f"{num_classes} (set num_classes, or initialise from a pre-training checkpoint)"
            )
        return model
    try:
        return load_unetr_init(init, num_classes=num_classes, feature_size=cfg.feature_size, **overrides)
    except RuntimeError as exc:  # load_state_dict size mismatches from overrides that change sizes
        raise InputError(
            f"{init}: cannot build the UNETR encoder from it ({str(exc).splitlines()[0]})"
        ) from None


def training_class_counts(cache: Cache, indices: list[int], num_classes: int) -> list[int]:
    """Voxels of each class 0..K-1 summed over the cache's cases at ``indices`` (from the cache's
    per-case class counts: nothing is read from the label maps)."""
    counts = [0] * num_classes
    for i in indices:
        case = cache.case(cache.cases[i])
        total = int(np.prod(case.shape))
        for value, n in zip(case.classes, case.meta.get("class_counts", []), strict=True):
            if value >= num_classes:
                raise InputError(
                    f"{cache.root}: case {case.name!r} has label {value}, above num_classes - 1 = "
                    f"{num_classes - 1}"
                )
            counts[value] += int(n)
            total -= int(n)
        counts[0] += total
    return counts


def class_weights_for(
    cfg: FinetuneConfig, cache: Cache, indices: list[int], num_classes: int
) -> torch.Tensor | None:
    """The cross-entropy weights of ``cfg.class_weights`` ([K] float32, or None for "none")."""
    spec = cfg.class_weights
    if spec == "none":
        return None
    if spec == "inverse_sqrt":
        return inverse_sqrt_weights(training_class_counts(cache, indices, num_classes)).float()
    if len(spec) != num_classes or any(not math.isfinite(w) or w < 0 for w in spec) or sum(spec) <= 0:
        raise InputError(
            f"class_weights={spec}: expected {num_classes} finite weights >= 0 (one per class, "
            "background first) with a positive sum"
        )
    return torch.tensor(spec, dtype=torch.float32)


@torch.no_grad()
def validate(ctx: Context, model: UNETR, roi: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Sliding-window Dice of each foreground class over the validation cases (split over ranks).

    Returns {"val_dice": mean over scored classes, "val_dice_per_class": [K-1] (NaN: never present)}.
    """
    cfg: FinetuneConfig = ctx.cfg  # type: ignore[assignment]
    env = ctx.env
    sums = torch.zeros(2, num_classes - 1, dtype=torch.float64, device=env.device)
    was_training = model.training
    model.eval()
    for idx in ctx.val_idx[env.rank :: env.world]:
        case = ctx.cache.case(idx)
        image = torch.from_numpy(np.array(case.image, dtype=np.float32))  # a writable copy
        check_finite(image[None], [case.name], ctx.cache.root, "validation")
        logits = sliding_window_logits(
            model,
            image,
            roi=roi,
            overlap=cfg.sw_overlap,
            sw_batch_size=cfg.sw_batch,
            device=env.device,
            out_device="cpu",
            amp=ctx.precision != "fp32" and env.device.type == "cuda",
        )
        dice, scored = dice_counts(logits.argmax(0), torch.from_numpy(np.array(case.label)), num_classes)
        sums[0] += dice.to(env.device)
        sums[1] += scored.to(env.device)
    model.train(was_training)
    all_sum(env, sums)
    per_class = torch.where(sums[1] > 0, sums[0] / sums[1].clamp_min(1), torch.full_like(sums[0], math.nan))
    scored = per_class[sums[1] > 0]
    mean = float(scored.mean()) if scored.numel() else math.nan
    return {"val_dice": mean, "val_dice_per_class": [float(x) for x in per_class]}


def build_task(ctx: Context) -> Task:
    """The UNETR, its Dice + CE loss and the labelled crops of this process."""
    cfg: FinetuneConfig = ctx.cfg  # type: ignore[assignment]
    env = ctx.env
    num_classes = check_num_classes(cfg, ctx.cache)
    names = run_label_names(cfg, ctx.cache, num_classes)
    model = build_model(cfg, num_classes).to(env.device).train()
    if cfg.freeze_encoder:  # before DDP and the optimizer: neither sees the encoder's parameters
        model.encoder.requires_grad_(False)
    lr_scales = None
    if cfg.layer_decay is not None or cfg.encoder_lr_scale != 1.0:
        from .optim import layer_lr_scales

        lr_scales = layer_lr_scales(model, cfg.layer_decay, cfg.encoder_lr_scale)
    roi = tuple(model.config.img_size)
    sampler_cfg = sampler_config(
        "finetune", **{"crop_size": roi, "num_samples": cfg.num_samples, **cfg.sampler}
    )
    dataset, sampler, loader, aug_cfg = make_train_loader(cfg, ctx.cache, ctx.train_idx, env, sampler_cfg)
    weights = class_weights_for(cfg, ctx.cache, ctx.train_idx, num_classes)
    if weights is not None:
        weights = weights.to(env.device)

    def loss_fn(net: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = device_augment(
            aug_cfg,
            batch["image"].to(env.device, non_blocking=True),
            batch["label"].to(env.device, non_blocking=True),
        )
        labels = labels.long()
        logits = net(images)
        loss = dice_ce_loss(logits, labels, cfg.dice_weight, cfg.ce_weight, weights)
        dice = mean_dice(logits.detach(), labels).nan_to_num(nan=1.0)  # no foreground in either: agreement
        return loss, {"dice": dice}

    def on_epoch_end(epoch: int) -> dict[str, Any]:
        done = epoch + 1
        if not ctx.val_idx or not (done % cfg.val_every == 0 or done == cfg.epochs):
            return {}
        out = validate(ctx, model, roi, num_classes)
        if not math.isnan(out["val_dice"]):
            out["score"] = out["val_dice"]
        return out

    plan = ctx.cache.plan.model_copy(update={"crop_size": roi})
    return Task(
        stage="finetune",
        model=model,
        ddp_model=wrap_ddp(model, env),
        loss_fn=loss_fn,
        loader=loader,
        sampler=sampler,
        dataset=dataset,
        plan=plan,
        on_epoch_end=on_epoch_end,
        extra={
            "init": str(cfg.init) if cfg.init else None,
            # the flips the model saw (array axes of the plan's orientation): predict's --tta uses these
            "augment": {"flip_axes": list(sampler_cfg.flip_axes) if sampler_cfg.flip_prob > 0 else []},
            "class_weights": None if weights is None else [round(float(w), 6) for w in weights],
            **({"labels": label_names_to_json(names)} if names else {}),
        },
        lr_scales=lr_scales,
        cache=ctx.cache,
    )


def run(cfg: FinetuneConfig, resume: bool = False) -> RunResult:
    """Fine-tune (or ``resume``) as ``cfg`` says; returns the run's result (rank 0 wrote its files)."""
    return execute(cfg, resume, build_task)
