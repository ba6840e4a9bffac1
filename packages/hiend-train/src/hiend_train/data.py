"""Training data: the cache, the seeded train/validation split and the DataLoader over crops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hiend_data.errors import InputError

from .dist import DistEnv


def open_cache(path: str | os.PathLike[str] | None) -> Any:
    """The hiend-data cache at ``path`` (InputError when missing, not a cache, or empty)."""
    from hiend_data.cache import Cache

    if path is None:
        raise InputError("no cache given (--cache DIR, or cache = \"DIR\" in the config file)")
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: cache folder not found (make one with `hiend-data preprocess SRC {path}`)")
    cache = Cache.open(path)
    if not cache.cases:
        raise InputError(f"{path}: the cache holds no complete case")
    return cache


def split_cases(names: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of the cache's case names -> (train indices, validation indices) into ``names``.

    :func:`hiend_data.discovery.split` on the names: it depends only on the names and the seed.
    """
    from hiend_data.discovery import Case, split

    if val_fraction <= 0 or len(names) < 2:
        return list(range(len(names))), []
    train, val = split([Case(n, []) for n in names], val_fraction=val_fraction, seed=seed)
    index = {n: i for i, n in enumerate(names)}
    return [index[c.case_id] for c in train], [index[c.case_id] for c in val]


def make_loader(cache: Any, sampler_cfg: Any, indices: list[int], batch_size: int, workers: int, seed: int,
                env: DistEnv) -> tuple[Any, Any, Any]:
    """-> (CropDataset over the whole cache, DistributedSampler over ``indices``, DataLoader).

    A batch is ``batch_size`` volumes of this process's share of the cases (shuffled per epoch by
    ``sampler.set_epoch``), each giving ``sampler_cfg.num_samples`` crops: ``batch["image"]``
    ``[batch_size * num_samples, C, *crop]``. Crops depend only on (seed, epoch, case index).
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from hiend_data.torch import CropDataset, collate_crops

    dataset = CropDataset(cache.root, sampler_cfg, seed=seed)
    subset = Subset(dataset, indices)
    sampler = DistributedSampler(subset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    cuda = env.device is not None and env.device.type == "cuda"
    loader = DataLoader(subset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_crops, pin_memory=cuda, persistent_workers=workers > 0,
                        prefetch_factor=2 if workers > 0 else None, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    return dataset, sampler, loader
