"""The seeded train / validation split of the cache's cases, and the loader's batches."""

from __future__ import annotations

import pytest
import torch

from hiend_train.data import make_loader, split_cases
from hiend_train.dist import DistEnv


def test_split_is_seeded_disjoint_and_complete():
    names = [f"case_{i:02d}" for i in range(10)]
    train, val = split_cases(names, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert split_cases(names, 0.2, seed=0) == (train, val)
    others = {tuple(split_cases(names, 0.2, seed=s)[1]) for s in range(1, 6)}
    assert len(others | {tuple(val)}) > 1  # the seed changes the split
    # the split follows the names, not their order
    shuffled = names[::-1]
    _, val_rev = split_cases(shuffled, 0.2, seed=0)
    assert sorted(shuffled[i] for i in val_rev) == sorted(names[i] for i in val)


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(1, 0.2, 0), (2, 0.2, 1), (10, 0.0, 0), (10, 0.5, 5)])
def test_split_sizes(n, fraction, n_val):
    train, val = split_cases([f"c{i}" for i in range(n)], fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val


def test_loader_batches_are_volumes_times_crops(phantom_cache):
    from hiend_data.cache import Cache
    from hiend_data.sampling import SamplerConfig

    cache = Cache.open(phantom_cache)
    env = DistEnv(device=torch.device("cpu"))
    cfg = SamplerConfig.finetune(crop_size=(32, 32, 32), num_samples=3)
    dataset, sampler, loader = make_loader(cache, cfg, [0, 2, 4], batch_size=2, workers=0, seed=1, env=env)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(6, 1, 32, 32, 32), (3, 1, 32, 32, 32)]
    assert batches[0]["label"].shape == (6, 32, 32, 32)
    seen = {c for b in batches for c in b["case"]}
    assert seen == {cache.cases[i] for i in (0, 2, 4)}
    # the case order is a function of (seed, epoch)
    sampler.set_epoch(0)
    first = [b["case"] for b in loader]
    sampler.set_epoch(0)
    assert [b["case"] for b in loader] == first
