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

from worker_config import tiny_pretrain_config  # beside this script (sys.path[0])

from hiend_data.errors import InputError
from hiend_train import loop, pretrain
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
    cfg = tiny_pretrain_config(cache, out, epochs=50)
    with stop_on_signals():
        result = pretrain.run(cfg)
    (out / f"rank{rank}.json").write_text(
        json.dumps({"steps": result.fit.steps, "signal": result.fit.signal, "stopped": result.fit.stopped})
    )
