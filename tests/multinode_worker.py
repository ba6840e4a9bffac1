"""Run by test_multinode.py: one process of a two-"node" torchrun job (c10d rendezvous on localhost).

usage: python -m torch.distributed.run --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d
       --rdzv_endpoint 127.0.0.1:PORT --rdzv_id ID multinode_worker.py CACHE OUT

One epoch of tiny pre-training on every case of CACHE (no validation split). Each rank writes
``OUT/rank{R}.safetensors`` (its final weights) and ``OUT/rank{R}.json`` (its node, local rank, the
group size and the cases its DataLoader drew), outside the run folder, which rank 0 alone writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from hiend_data.torch import CropDataset
from hiend_train import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "hiend-train" / "tests"))
from worker_config import tiny_pretrain_config  # noqa: E402 (hiend-train's worker config)

SEEN: list[str] = []
_getitem = CropDataset.__getitem__


def _recording_getitem(self: CropDataset, index: int) -> dict:
    item = _getitem(self, index)
    SEEN.append(item["case"])
    return item


if __name__ == "__main__":
    cache, out = Path(sys.argv[1]), Path(sys.argv[2])
    CropDataset.__getitem__ = _recording_getitem  # workers=0: items are drawn in this process
    cfg = tiny_pretrain_config(cache, out, val_fraction=0.0)
    result = pretrain.run(cfg)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    info = {
        "rank": rank,
        "world": int(os.environ["WORLD_SIZE"]),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "group_rank": int(os.environ.get("GROUP_RANK", -1)),
        "seen": SEEN,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))
