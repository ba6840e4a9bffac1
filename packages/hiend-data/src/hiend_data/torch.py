"""PyTorch adapter (``pip install hiend-data[torch]``): the crop sampler as a map-style Dataset.

With :mod:`hiend_data.torch_augment` (the recipe on the GPU), the only modules of hiend-data that import torch.

Item ``i`` is every crop of case ``i`` (``cfg.num_samples`` of them), drawn from the stream
``SeedSequence(seed, spawn_key=(epoch, i))``: what an item holds depends only on (seed, epoch, i),
never on which DataLoader worker computed it or how many workers there are, so a run is reproducible
with any ``num_workers`` and every worker draws from its own independent streams. Call
:meth:`CropDataset.set_epoch` at the start of each epoch for fresh crops (as with DistributedSampler);
the epoch lives in shared memory, so persistent workers see it too.

Fork-safe: the cache's memory maps are opened lazily in the process that reads them (a pickled dataset
carries only the cache's location), and a forked worker's inherited maps are read-only and shared.
Use :func:`collate_crops` as ``collate_fn`` to get ``[B * N, C, X, Y, Z]`` batches (MONAI's
``list_data_collate`` layout) instead of the default ``[B, N, C, X, Y, Z]``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampling import CropSampler, SamplerConfig

__all__ = ["CropDataset", "collate_crops"]


class CropDataset(Dataset):
    """Crops of a preprocessed cache as torch tensors.

    cache: a cache folder (opened lazily per process) or an object with ``cases`` / ``case(name)``
        (e.g. :class:`hiend_data.cache.Cache` or :class:`hiend_data.sampling.ArrayCache`).
    cfg: :class:`~hiend_data.sampling.SamplerConfig` (default: the pre-training recipe).
    seed: root seed; epoch: the epoch whose crops ``__getitem__`` draws (see :meth:`set_epoch`).

    ``ds[i]`` -> ``{"image": float32 [N, C, *crop_size], "label": integer [N, *crop_size] (labelled
    caches only; uint8 or int32, call ``.long()`` for a loss), "case": name}``.
    """

    def __init__(
        self,
        cache: str | os.PathLike[str] | Any,
        cfg: SamplerConfig | None = None,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        self._cache_path = Path(cache) if isinstance(cache, (str, os.PathLike)) else None
        self._cache = None if self._cache_path is not None else cache
        self.cfg = cfg if cfg is not None else SamplerConfig.pretrain()
        self.seed = int(seed)
        # In shared memory, so that set_epoch also reaches persistent DataLoader workers.
        self._epoch = mp.RawValue("q", int(epoch))
        self._sampler: CropSampler | None = None
        self._pid: int | None = None
        self.case_names = list(self._open_cache().cases)

    def _open_cache(self) -> Any:
        if self._cache is None:
            from .cache import Cache

            self._cache = Cache.open(self._cache_path)  # type: ignore[arg-type]
        return self._cache

    @property
    def sampler(self) -> CropSampler:
        """This process's :class:`CropSampler` (created on first use in each process)."""
        if self._sampler is None or self._pid != os.getpid():
            self._sampler = CropSampler(self._open_cache(), self.cfg, seed=self.seed)
            self._pid = os.getpid()
        return self._sampler

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sampler"] = None
        if self._cache_path is not None:
            state["_cache"] = None
        if mp_context.get_spawning_popen() is None:  # a plain pickle, not a worker being started
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = mp.RawValue("q", state["_epoch"])
        self.__dict__.update(state)

    @property
    def epoch(self) -> int:
        """The epoch whose crops items hold."""
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` from now on, in this process and in its DataLoader workers
        (persistent ones too); call it before iterating over the loader for that epoch."""
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return len(self.case_names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self.case_names):
            raise IndexError(f"case index {index} out of range 0..{len(self.case_names) - 1}")
        sampler = self.sampler
        images, labels = sampler.sample_batch(index, sampler.rng(self.epoch, index))  # type: ignore[misc]
        item: dict[str, Any] = {"image": torch.from_numpy(images), "case": self.case_names[index]}
        if labels is not None:
            if labels.dtype not in (np.uint8, np.int16, np.int32, np.int64):
                labels = labels.astype(np.int32)
            item["label"] = torch.from_numpy(labels)
        return item


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along dim 0; inside a DataLoader worker straight into shared memory, which saves
    the copy the worker would otherwise make to send the batch (as torch's default collate does)."""
    first = tensors[0]
    shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    out = None
    if torch.utils.data.get_worker_info() is not None:
        try:
            storage = first._typed_storage()._new_shared(int(np.prod(shape)), device=first.device)
            out = first.new(storage).resize_(shape)
        except (AttributeError, RuntimeError):  # private API: fall back to a plain concatenation
            out = None
    return torch.cat(tensors, 0, out=out)


def collate_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate items' crops: ``image`` [B * N, C, X, Y, Z], ``label`` [B * N, X, Y, Z], ``case``
    a list of B * N names."""
    out: dict[str, Any] = {"image": _cat([it["image"] for it in items])}
    if "label" in items[0]:
        out["label"] = _cat([it["label"] for it in items])
    out["case"] = [it["case"] for it in items for _ in range(len(it["image"]))]
    return out
