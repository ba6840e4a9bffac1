"""DDP through torchrun on the CPU (gloo): two ranks end with identical weights, only rank 0 writes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hiend_train.rundir import RunDir

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_two_cpu_ranks_train_the_same_model(phantom_cache, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(phantom_cache), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    run = RunDir(tmp_path / "run")
    log = run.read_log()
    setup = next(r for r in log if r["event"] == "setup")
    assert setup["world"] == 2 and setup["train_cases"] == 5 and setup["crops_per_step"] == 4
    steps = [r for r in log if r["event"] == "step"]
    assert len(steps) == 3  # 5 cases over 2 ranks, one per rank and step (padded to 6)
    assert all(math.isfinite(r["loss"]) for r in steps)
    epoch = next(r for r in log if r["event"] == "epoch")
    assert math.isfinite(epoch["loss"]) and math.isfinite(epoch["val_loss"])
    # only rank 0 wrote: one start line, one preview, the trained weights
    assert sum(r["event"] == "start" for r in log) == 1
    assert [p.name for p in run.previews.iterdir()] == ["epoch_0001.png"]
    saved = load_file(str(run.last))
    for k, v in saved.items():
        assert torch.equal(v, w0[k]), k
    # both ranks started from the seed's weights, and training moved them
    from hiend_model import build

    torch.manual_seed(0)
    fresh = build("tiny", img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, decoder_embed_dim=24,
                  decoder_num_heads=4).state_dict()
    assert torch.equal(fresh["decoder_pos_embed"], saved["decoder_pos_embed"])
    moved = [k for k in fresh if not torch.equal(fresh[k], saved[k])]
    assert "encoder.blocks.0.attn.qkv.weight" in moved and "decoder.head.weight" in moved
