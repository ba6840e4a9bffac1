"""The process's device: hiend-model's one rule; several processes on mps are refused before any
process group is joined."""

from __future__ import annotations

import pytest
import torch
import torch.distributed

from hiend_data.errors import InputError
from hiend_model import device as model_device
from hiend_train import dist


def test_resolve_device_is_hiend_models():
    assert dist.resolve_device is model_device.resolve_device
    assert dist.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="device 'tpu'"):
        dist.resolve_device("tpu")


def test_single_process_setup_on_cpu(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = dist.setup("cpu")
    assert (env.rank, env.world, env.device, env.distributed, env.main) == (
        0,
        1,
        torch.device("cpu"),
        False,
        True,
    )


def test_mps_is_one_process_only(monkeypatch):
    monkeypatch.setattr(dist, "resolve_device", lambda name, local_rank=0: torch.device("mps"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.setup("mps").device.type == "mps"  # one process on Apple's GPU is allowed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match=r"device 'mps': 2 processes .* run one process on mps"):
        dist.setup("mps")
    assert not torch.distributed.is_initialized()
