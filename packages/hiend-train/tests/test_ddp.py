"""DDP through torchrun on the CPU (gloo): two ranks end with identical weights, only rank 0 writes,
and two ranks on half the global batch each train what one process does on the whole of it."""

from __future__ import annotations

import json
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


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the one-process run must not think it is part of a group
    return env


def test_two_cpu_ranks_train_the_same_model(phantom_cache, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(
        [*TORCHRUN, str(worker), str(phantom_cache), str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    # the probe ran on rank 0 only, once per step from step 0, and the ranks stayed in step
    assert [r["step"] for r in log if r["event"] == "probe"] == [0, 1, 2, 3]
    assert run.best_probe.is_file()
    saved = load_file(str(run.last))
    for k, v in saved.items():
        assert torch.equal(v, w0[k]), k
    # both ranks started from the seed's weights, and training moved them
    from hiend_model import build

    torch.manual_seed(0)
    fresh = build(
        "tiny",
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=4,
        num_heads=4,
        decoder_embed_dim=24,
        decoder_num_heads=4,
    ).state_dict()
    assert torch.equal(fresh["decoder_pos_embed"], saved["decoder_pos_embed"])
    moved = [k for k in fresh if not torch.equal(fresh[k], saved[k])]
    assert "encoder.blocks.0.attn.qkv.weight" in moved and "decoder.head.weight" in moved


#: Tolerances (fp32 on the CPU). gloo sums the two ranks' gradients and DDP divides by 2 where one process
#: back-propagates the mean over the whole batch: the same sums in another order, float rounding apart.
#: Losses are compared relatively. AdamW divides each element's step by the root of its squared-gradient
#: average, so an element whose gradient is at the level of rounding moves by a fraction of lr differently
#: in either run: the weights get an absolute tolerance in units of lr, and the update (trained minus
#: initial weights) of each tensor a norm-wise relative one. Measured when this test was written (2 cores,
#: one intra-op thread): loss 2.2e-7, weights 0.0125 lr, worst tensor update 4.2e-4 (the same one-process
#: run with 2 threads instead of 1 differs from itself by 1.03 lr and 1.4e-2 in update: the DDP run is
#: within the rounding noise of one process).
LOSS_RTOL = 1e-5
WEIGHT_RTOL, WEIGHT_ATOL_LR = 1e-4, 0.05
UPDATE_RTOL = 2e-3


def test_two_ranks_on_half_batches_match_one_process_on_the_global_batch(tiny, tmp_path):
    """Fine-tuning (deterministic given weights and crops: no masking noise, no drop-path) for 2 epochs of
    2 optimizer steps with gradient accumulation (so DDP's no_sync is crossed too): world 2 with
    batch_size 1 against world 1 with batch_size 2, the same global batch of 4 crops per micro-batch.

    Pre-training is not compared this way on purpose: its masking noise is seeded per rank
    (``loop.step_seed``), so two ranks draw other masks than one process does.
    """
    worker = Path(__file__).with_name("ddp_compare_worker.py")
    fields = dict(epochs=2, grad_accum=2, num_samples=2, val_fraction=0.0, warmup_epochs=0.5, lr=2e-3)
    runs = {
        "two": tiny("finetune", out=tmp_path / "two", batch_size=1, **fields),
        "one": tiny("finetune", out=tmp_path / "one", batch_size=2, **fields),
    }
    procs = {}
    for name, cfg in runs.items():
        path = tmp_path / f"{name}.json"
        path.write_text(cfg.model_dump_json())
        cmd = (
            [*TORCHRUN, str(worker), str(path)] if name == "two" else [sys.executable, str(worker), str(path)]
        )
        procs[name] = subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name}: {out[-3000:]}"
    two, one = RunDir(tmp_path / "two"), RunDir(tmp_path / "one")
    log2, log1 = two.read_log(), one.read_log()
    setup2, setup1 = (next(r for r in log if r["event"] == "setup") for log in (log2, log1))
    assert (setup2["world"], setup1["world"]) == (2, 1)
    assert setup2["crops_per_step"] == setup1["crops_per_step"] == 4
    assert setup2["train_case_names"] == setup1["train_case_names"] and len(setup1["train_case_names"]) == 6
    # the union of the ranks' micro-batches is the one process's micro-batch, batch by batch
    r0, r1 = (json.loads((tmp_path / "two" / f"cases_rank{r}.json").read_text()) for r in (0, 1))
    alone = json.loads((tmp_path / "one" / "cases_rank0.json").read_text())
    assert len(r0) == len(r1) == len(alone) == 2 * 3  # 6 cases: 3 micro-batches an epoch
    for a, b, c in zip(r0, r1, alone, strict=True):
        assert len(a) == len(b) == 2 and len(c) == 4
        assert sorted(a + b) == sorted(c)
    # the same losses, step by step, and the same learning rates
    steps2, steps1 = ([r for r in log if r["event"] in ("step", "epoch")] for log in (log2, log1))
    assert [(r["event"], r["step"]) for r in steps2] == [(r["event"], r["step"]) for r in steps1]
    assert [r["step"] for r in steps1 if r["event"] == "step"] == [1, 2, 3, 4]
    loss_diff = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(steps2, steps1, strict=True))
    print(f"max relative loss difference: {loss_diff:.3g}")
    for a, b in zip(steps2, steps1, strict=True):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), (a, b)
    # the same weights at the end, from the same start
    w0 = load_file(str(one.root / "init.safetensors"))
    for k, v in load_file(str(two.root / "init.safetensors")).items():
        assert torch.equal(v, w0[k]), k
    w2, w1 = load_file(str(two.last)), load_file(str(one.last))
    assert w2.keys() == w1.keys() == w0.keys()
    lr = runs["one"].lr
    print(f"max |w2 - w1| / lr: {max(float((w2[k] - w1[k]).abs().max()) for k in w1) / lr:.3g}")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL_LR * lr, msg=k)
        moved = (w1[k] - w0[k]).norm()
        assert moved > 0, f"{k}: training did not move it"
        assert float((w2[k] - w1[k]).norm() / moved) <= UPDATE_RTOL, k


def _rank1_worker(cache: Path, out: Path, at: int, mode: str) -> subprocess.CompletedProcess:
    """ddp_signal_worker.py under torchrun: rank 1 is signalled (``signal``) or fails (``raise``) in step ``at``."""
    worker = Path(__file__).with_name("ddp_signal_worker.py")
    return subprocess.run(
        [*TORCHRUN, str(worker), str(cache), str(out), str(at), mode],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(phantom_cache, tmp_path):
    """Only rank 1 is asked to stop (during step 4): its mark travels in the all-reduce both ranks do, so
    both stop after step 4 with a checkpoint, none waits for the other (a hang fails the timeout)."""
    proc = _rank1_worker(phantom_cache, tmp_path, 4, "signal")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1] == {"steps": 4, "signal": "SIGTERM", "stopped": True}
    run = RunDir(tmp_path / "run")
    assert torch.load(run.state_path, weights_only=True)["step"] == 4


def test_an_error_on_one_rank_ends_the_whole_run_within_seconds(phantom_cache, tmp_path):
    """Rank 1 fails (bad input) during step 3 while rank 0 waits in the step's all-reduce: torchrun's
    agent sees the failed worker and stops the other, so the command ends with the error instead of
    hanging until a collective timeout (30 minutes by default)."""
    import time

    t0 = time.monotonic()
    proc = _rank1_worker(phantom_cache, tmp_path, 3, "raise")
    seconds = time.monotonic() - t0
    assert proc.returncode != 0
    assert "rank 1: a bad case at step 3" in proc.stdout + proc.stderr
    assert seconds < 120, seconds  # measured: about 8 s, start-up included
    assert not (tmp_path / "rank0.json").exists() and not (tmp_path / "rank1.json").exists()
