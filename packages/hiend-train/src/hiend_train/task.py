"""What pre-training or fine-tuning hands to the loop: a :class:`Task`, and the types of its parts.

A task is the model, its loss, its data and what is saved with it; :func:`hiend_train.loop.fit` runs
any task the same way. ``stage`` says which of the two it is (``pretrain`` | ``finetune``; the model's
own kind, ``mae`` | ``unetr``, is the checkpoint's, :mod:`hiend_model.kinds`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

import torch

if TYPE_CHECKING:
    from hiend_data.cache import Cache
    from hiend_data.plan import Plan

#: the two kinds of run (config ``stage``, ``extra.hiend_train.stage`` in checkpoints)
Stage = Literal["pretrain", "finetune"]
STAGES: tuple[str, ...] = ("pretrain", "finetune")

#: a value a checkpoint's metadata or a log record can hold (JSON)
JSON = Any


class Batch(TypedDict, total=False):
    """A training batch of :func:`hiend_train.data.collate_checked`: the crops ``image`` [N, C, *crop],
    ``label`` [N, 1, *crop] (fine-tuning), ``case`` (the case of each crop), or ``error``: the line of
    a case a DataLoader worker could not crop (the loop raises it)."""

    image: torch.Tensor
    label: torch.Tensor
    case: list[str]
    error: str


#: loss_fn(model, batch) -> (scalar loss, {metric: scalar tensor or float}); ``model`` is the
#: (DDP-wrapped, compiled) network; metrics are averaged like the loss (keep them tensors: no host sync)
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, Mapping[str, "torch.Tensor | float"]]]

#: on_epoch_end(epoch) -> what to add to the epoch's record (``score``: higher is better)
EpochHook = Callable[[int], dict[str, JSON]]


class StepHook(Protocol):
    """Work at optimizer-step boundaries (the pre-training probe, :mod:`hiend_train.probing`).

    :func:`hiend_train.loop.fit` calls it once before the first step of a run (a resumed run: at the
    step it resumes from) and after every optimizer step, before the checkpointer decides to save:
    ``hook(epoch, batch, step)`` with ``epoch`` epochs done, ``batch`` micro-batches of the current
    epoch done and ``step`` optimizer steps done. Its :meth:`state_dict` goes into every checkpoint's
    state.pt (numbers, strings, None, lists and dicts: ``weights_only`` loading) and comes back through
    :meth:`load_state_dict` on resume, so that a resumed run repeats nothing and skips nothing."""

    def __call__(self, epoch: int, batch: int, step: int) -> None: ...

    def state_dict(self) -> dict[str, JSON]: ...

    def load_state_dict(self, state: Mapping[str, JSON]) -> None: ...


class EpochAware(Protocol):
    """A dataset or sampler that draws per epoch (:class:`hiend_data.torch.CropDataset`,
    :class:`hiend_train.data.EpochSampler`)."""

    def set_epoch(self, epoch: int) -> None: ...


class Loader(Protocol):
    """What the loop iterates: batches, ``len()`` of them an epoch (a DataLoader, or a list in tests)."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


@dataclass
class Task:
    """What pre-training or fine-tuning hands to :func:`~hiend_train.loop.fit`.

    stage: ``pretrain`` | ``finetune`` (saved with every checkpoint); model: the unwrapped network (on
    its device); ddp_model: what the loss calls (DDP wrapper, ``torch.compile`` of it, or the model);
    loader / sampler: the training DataLoader and its :class:`~hiend_train.data.EpochSampler`; dataset:
    the CropDataset (``set_epoch``); plan: saved in every checkpoint; on_epoch_end(epoch) -> metrics to
    log (validation, previews), with ``"score"`` (higher is better) to keep ``best.safetensors``; extra:
    more checkpoint metadata (label names, class weights); lr_scales: per-parameter learning-rate
    multipliers for :func:`~hiend_train.optim.build_optimizer` (None: all 1); cache: the
    :class:`hiend_data.cache.Cache` the crops come from (named in errors about its data); on_step: a
    :class:`StepHook` run at step boundaries (None: none).
    """

    stage: str
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    loss_fn: LossFn
    loader: Loader
    sampler: EpochAware | None
    dataset: EpochAware | None
    plan: Plan | None
    on_epoch_end: EpochHook | None = None
    extra: dict[str, JSON] = field(default_factory=dict)
    lr_scales: dict[str, float] | None = None
    cache: Cache | None = None
    on_step: StepHook | None = None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` wrapper (``_orig_mod``), else ``model``: what checkpoints
    save and load, so that their keys carry no ``_orig_mod.`` prefix."""
    return getattr(model, "_orig_mod", model)
