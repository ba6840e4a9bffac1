"""Run by test_ddp.py under torchrun: one epoch of tiny pre-training, then each rank saves its weights.

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py CACHE OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from hiend_train import pretrain
from hiend_train.config import PretrainConfig

if __name__ == "__main__":
    cache, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = PretrainConfig(
        cache=cache,
        out=out / "run",
        preset="tiny",
        epochs=1,
        batch_size=1,
        num_samples=2,
        workers=1,
        lr=1e-3,
        warmup_epochs=0,
        progress=False,
        log_every=1,
        device="cpu",
        preview_every=1,
        val_fraction=0.2,
        model=dict(
            img_size=32,
            patch_size=8,
            embed_dim=48,
            depth=4,
            num_heads=4,
            decoder_embed_dim=24,
            decoder_num_heads=4,
        ),
    )
    result = pretrain.run(cfg)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
