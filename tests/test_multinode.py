"""Two "nodes" on this machine: two torchrun launchers (one process each) meeting through a c10d
rendezvous on 127.0.0.1, as two hosts of a cluster would (gloo on the CPU).

What a multi-node run must get right: the launchers agree on a group of 2 (node ranks 0 and 1), the
cases are split between the ranks without overlap and cover the dataset, rank 0 alone writes the run
folder, and both ranks end with the same weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hiend_data import Plan
from hiend_data.cache import Cache, preprocess_dataset
from hiend_data.phantom import make_phantom_dataset
from hiend_train.rundir import RunDir

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

WORKER = Path(__file__).with_name("multinode_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    make_phantom_dataset(root / "raw", cases=6, seed=3)
    plan = Plan(spacing=(4.0, 4.0, 4.0), crop_size=(32, 32, 32))
    preprocess_dataset(root / "raw", root / "cache", plan, workers=0, progress=False)
    return root / "cache"


def test_two_nodes_on_localhost_train_one_model(cache: Path, tmp_path: Path):
    port = _free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"hiend-{port}",
        "--max_restarts", "0", str(WORKER), str(cache), str(tmp_path),
    ]  # fmt: skip
    nodes = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill()
            pytest.fail("the two-node run did not finish in 240 s")
    assert all(n.returncode == 0 for n in nodes), "\n---\n".join(o[-3000:] for o in outputs)

    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # two launchers, one process each: a group of 2 with node ranks 0 and 1 and local rank 0 on each
    assert [i["world"] for i in info] == [2, 2]
    assert sorted(i["group_rank"] for i in info) == [0, 1]
    assert [i["local_rank"] for i in info] == [0, 0]
    # the cases are split: disjoint, together every case once (6 cases, 3 per rank: no padding)
    names = sorted(Cache.open(cache).cases)
    seen0, seen1 = info[0]["seen"], info[1]["seen"]
    assert len(seen0) == len(seen1) == 3
    assert not set(seen0) & set(seen1)
    assert sorted(seen0 + seen1) == names
    # the same weights on both ranks, and the run folder's weights are rank 0's
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    run = RunDir(tmp_path / "run")
    saved = load_file(str(run.last))
    assert all(torch.equal(v, w0[k]) for k, v in saved.items())
    # rank 0 alone wrote: one start line, one setup with world 2, 3 steps (one case per rank a step)
    log = run.read_log()
    assert sum(r["event"] == "start" for r in log) == 1
    setup = [r for r in log if r["event"] == "setup"]
    assert len(setup) == 1 and setup[0]["world"] == 2 and setup[0]["train_cases"] == 6
    assert sum(r["event"] == "step" for r in log) == 3
