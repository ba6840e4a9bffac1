"""Run by test_ddp.py under torchrun: tiny pre-training where only rank 1 is asked to stop (as if only
its process got the SIGTERM) while its optimizer step AT runs (MODE ``signal``), or where rank 1 fails
there with an InputError (MODE ``raise``); each rank writes what its run returned.

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_signal_worker.py CACHE OUT AT MODE
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from hiend_data.errors import InputError
from hiend_train import loop, pretrain
from hiend_train.config import PretrainConfig
from hiend_train.signals import REQUEST, stop_on_signals

if __name__ == "__main__":
    cache, out, at, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rank = int(os.environ["RANK"])
    real = loop.lr_at
    calls = [0]

    def lr_at(step, *args, **kwargs):
        calls[0] += 1
        if rank == 1 and step + 1 == at and calls[0] > 1:
            if mode == "raise":
                raise InputError(f"rank 1: a bad case at step {at}")
            REQUEST.request(signal.SIGTERM)
        return real(step, *args, **kwargs)

    loop.lr_at = lr_at
    cfg = PretrainConfig(
        cache=cache,
        out=out / "run",
        preset="tiny",
        epochs=50,
        batch_size=1,
        num_samples=2,
        workers=0,
        lr=1e-3,
        warmup_epochs=0,
        progress=False,
        log_every=1,
        device="cpu",
        preview_every=0,
        model=dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, decoder_embed_dim=24,
                   decoder_num_heads=4),
    )  # fmt: skip
    with stop_on_signals():
        result = pretrain.run(cfg)
    (out / f"rank{rank}.json").write_text(
        json.dumps({"steps": result.fit.steps, "signal": result.fit.signal, "stopped": result.fit.stopped})
    )
