"""Run by test_ddp.py under torchrun: one epoch of tiny pre-training, then each rank saves its weights.

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py CACHE OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file
from worker_config import tiny_pretrain_config  # beside this script (sys.path[0])

from hiend_train import pretrain

if __name__ == "__main__":
    cache, out = Path(sys.argv[1]), Path(sys.argv[2])
    # with the probe at every step: rank 0 probes, rank 1 waits at its next all-reduce
    cfg = tiny_pretrain_config(
        cache, out, workers=1, preview_every=1, val_fraction=0.2, probe=cache, probe_every=1
    )
    result = pretrain.run(cfg)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
