"""Fixtures of hiend-train's tests: a small phantom cache (4 mm, labelled) and tiny run configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

#: a 32^3 Hi-End-MAE small enough for a step in tens of milliseconds on one CPU thread
TINY_MODEL: dict[str, Any] = dict(
    img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, decoder_embed_dim=24, decoder_num_heads=4
)


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six labelled phantoms (seed 0) preprocessed at 4 mm: volumes of about 20..60 voxels per axis."""
    from hiend_data import Plan
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(root / "raw", cases=6, seed=0)
    preprocess_dataset(
        root / "raw",
        root / "cache",
        Plan(spacing=(4.0, 4.0, 4.0), crop_size=(32, 32, 32)),
        workers=0,
        progress=False,
    )
    return root / "cache"


@pytest.fixture
def tiny(phantom_cache: Path, tmp_path: Path):
    """``tiny(kind, **fields)`` -> a config of ``kind`` for the tiny model on the phantom cache, one
    process, no DataLoader workers, no progress bar, output in a fresh temporary folder."""
    from hiend_train.config import FinetuneConfig, PretrainConfig

    def make(kind: str = "pretrain", **fields: Any):
        base: dict[str, Any] = dict(
            cache=phantom_cache,
            out=tmp_path / f"run_{kind}",
            preset="tiny",
            model=dict(TINY_MODEL),
            epochs=2,
            batch_size=2,
            num_samples=2,
            workers=0,
            lr=1e-3,
            warmup_epochs=1,
            progress=False,
            log_every=1,
            device="cpu",
        )
        if kind == "finetune":
            base.update(feature_size=4, val_fraction=0.0)
        else:
            base.update(preview_every=0)
        base.update(fields)
        return (PretrainConfig if kind == "pretrain" else FinetuneConfig)(**base)

    return make
