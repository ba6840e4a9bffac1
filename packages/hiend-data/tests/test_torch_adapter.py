"""The torch adapter: tensors out, fork-safe DataLoader workers, deterministic distinct streams."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch  # hiend-data[torch]: the development environment always has it
from torch.utils.data import DataLoader

from hiend_data.sampling import ArrayCache, ArrayCase, SamplerConfig
from hiend_data.torch import CropDataset, collate_crops

CFG = SamplerConfig.pretrain(num_samples=2, crop_size=(32, 32, 32))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("torch_adapter")
    src = make_phantom_dataset(root / "raw", cases=4, seed=8)
    preprocess_dataset(src, root / "cache", workers=0, progress=False)
    return root / "cache"


def _run(ds: CropDataset, workers: int) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    loader = DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=collate_crops)
    return [(b["case"], b["image"].clone(), b["label"].clone()) for b in loader]


def test_dataloader_workers_deterministic_and_distinct(cache_dir: Path) -> None:
    ds = CropDataset(cache_dir, CFG, seed=3)
    a, b, serial = _run(ds, 2), _run(ds, 2), _run(ds, 0)
    assert [x[0] for x in a] == [[f"phantom_{i:03d}"] * 2 for i in range(4)]
    for (_, ia, la), (_, ib, lb), (_, i0, l0) in zip(a, b, serial, strict=False):
        assert ia.shape == (2, 1, 32, 32, 32) and ia.dtype == torch.float32 and ia.is_contiguous()
        assert la.shape == (2, 32, 32, 32) and not la.is_floating_point()
        assert torch.equal(ia, ib) and torch.equal(la, lb)  # the same run twice
        assert torch.equal(ia, i0) and torch.equal(la, l0)  # independent of the worker count
    # items computed by different workers (0, 2 vs 1, 3) come from different streams
    seen = [x[1] for x in a]
    assert all(not torch.equal(seen[i][0], seen[j][0]) for i in range(4) for j in range(i + 1, 4))
    ds.set_epoch(1)
    assert not torch.equal(_run(ds, 0)[0][1], a[0][1])


def test_item_matches_the_sampler_stream(cache_dir: Path) -> None:
    from hiend_data.cache import Cache
    from hiend_data.sampling import CropSampler

    ds = CropDataset(cache_dir, CFG, seed=5, epoch=2)
    item = ds[1]
    s = CropSampler(Cache.open(cache_dir), CFG, seed=5)
    images, labels = s.sample_batch(1, s.rng(2, 1))
    np.testing.assert_array_equal(item["image"].numpy(), images)
    np.testing.assert_array_equal(item["label"].numpy(), labels)
    assert item["case"] == "phantom_001" and len(ds) == 4
    with pytest.raises(IndexError):
        ds[4]


def test_pickles_without_open_maps(cache_dir: Path) -> None:
    ds = CropDataset(cache_dir, CFG, seed=1)
    first = ds[0]["image"].clone()
    state = pickle.dumps(ds)
    assert b"memmap" not in state and len(state) < 20_000
    again = pickle.loads(state)
    assert torch.equal(again[0]["image"], first)


def test_in_memory_cache_without_labels() -> None:
    img = np.random.default_rng(0).random((1, 40, 40, 40), dtype=np.float32)
    ds = CropDataset(ArrayCache({"x": ArrayCase(img)}), CFG)
    item = ds[0]
    assert "label" not in item and item["image"].shape == (2, 1, 32, 32, 32)
    batch = collate_crops([item, ds[0]])
    assert batch["image"].shape == (4, 1, 32, 32, 32) and batch["case"] == ["x"] * 4


def _collate_and_report(items):
    batch = collate_crops(items)
    batch["shared"] = batch["image"].is_shared() and batch["label"].is_shared()
    return batch


def test_worker_batches_are_built_in_shared_memory(cache_dir: Path) -> None:
    ds = CropDataset(cache_dir, CFG, seed=0)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=_collate_and_report))
    assert [b["image"].shape[0] for b in batches] == [4, 4]
    assert all(b["shared"] for b in batches)
    assert batches[0]["case"] == ["phantom_000"] * 2 + ["phantom_001"] * 2
    assert not collate_crops([ds[0]])["image"].is_shared()  # outside a worker: a plain concatenation


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_set_epoch_reaches_persistent_workers(cache_dir: Path, context: str) -> None:
    ds = CropDataset(cache_dir, CFG, seed=2)
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
        collate_fn=collate_crops,
        multiprocessing_context=context,
    )
    first = [b["image"].clone() for b in loader]
    ds.set_epoch(1)
    second = [b["image"].clone() for b in loader]
    serial = CropDataset(cache_dir, CFG, seed=2, epoch=1)
    expect = [collate_crops([serial[0], serial[1]])["image"], collate_crops([serial[2], serial[3]])["image"]]
    assert all(torch.equal(a, b) for a, b in zip(second, expect, strict=False))
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=False))
