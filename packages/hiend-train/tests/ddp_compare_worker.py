"""Run by test_ddp.py: tiny fine-tuning from a config file, as one process or under torchrun.

usage: python ddp_compare_worker.py CONFIG.json
       python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_compare_worker.py CONFIG.json

The run is hiend-train's own (``finetune.build_task`` through ``runner.execute``: sampler, loop, DDP,
optimizer, log.jsonl, last.safetensors). The only addition: each rank writes the case names of its
micro-batches, in order, to ``OUT/cases_rank{RANK}.json``, so the test can check that the two ranks'
batches together are the one process's batches, and rank 0 saves the initial weights to
``OUT/init.safetensors`` (what training moved them from).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from hiend_train import finetune
from hiend_train.config import FinetuneConfig
from hiend_train.runner import Context, execute
from hiend_train.task import Task

if __name__ == "__main__":
    cfg = FinetuneConfig.model_validate_json(Path(sys.argv[1]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    seen: list[list[str]] = []

    def build(ctx: Context) -> Task:
        task = finetune.build_task(ctx)
        if rank == 0:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.detach().clone().contiguous() for k, v in task.model.state_dict().items()},
                str(Path(cfg.out) / "init.safetensors"),
            )
        loss_fn = task.loss_fn

        def recording_loss(model: Any, batch: dict[str, Any]) -> Any:
            seen.append(list(batch["case"]))
            return loss_fn(model, batch)

        task.loss_fn = recording_loss
        return task

    execute(cfg, False, build)
    (Path(cfg.out) / f"cases_rank{rank}.json").write_text(json.dumps(seen))
