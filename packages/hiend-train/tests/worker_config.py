"""The tiny pre-training config of the torchrun worker scripts (ddp_worker.py, ddp_signal_worker.py and
the repository's tests/multinode_worker.py): a 32^3 ViT of four blocks on the CPU, one process's batch
of one volume with two crops, a log line every step. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiend_train.config import PretrainConfig

#: The model of every worker script: patch 8 on a 32^3 crop, 4 blocks of width 48
WORKER_MODEL = dict(
    img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, decoder_embed_dim=24, decoder_num_heads=4
)


def tiny_pretrain_config(cache: Path, out: Path, **fields: Any) -> PretrainConfig:
    """``PretrainConfig`` of the workers, writing the run to ``out / "run"``; ``fields`` override."""
    base: dict[str, Any] = dict(
        cache=cache,
        out=out / "run",
        preset="tiny",
        epochs=1,
        batch_size=1,
        num_samples=2,
        workers=0,
        lr=1e-3,
        warmup_epochs=0,
        progress=False,
        log_every=1,
        device="cpu",
        preview_every=0,
        model=dict(WORKER_MODEL),
    )
    return PretrainConfig(**{**base, **fields})
