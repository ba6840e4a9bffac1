"""augment_on = "gpu": the workers only crop, the recipe runs on the batch on the device (here the CPU
stands in for it); runs stay reproducible and the loader's settings are the rest of the recipe."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hiend_data.errors import InputError
from hiend_data.sampling import SamplerConfig
from hiend_train import pretrain
from hiend_train.data import device_augment, split_augmentation
from hiend_train.rundir import RunDir


def test_split_moves_the_recipe_to_the_device():
    cfg = SamplerConfig.pretrain(crop_size=(32, 32, 32), num_samples=2)
    same, none = split_augmentation(cfg, "cpu")
    assert same is cfg and none is None
    loader_cfg, aug = split_augmentation(cfg, "gpu")
    assert aug is cfg
    assert (loader_cfg.flip_prob, loader_cfg.rot90_prob, loader_cfg.scale_prob, loader_cfg.shift_prob) == (
        0,
        0,
        0,
        0,
    )
    # everything else (crop size, centres, samples) is unchanged
    rest = {k: v for k, v in loader_cfg.model_dump().items() if not k.endswith("_prob")}
    assert rest == {k: v for k, v in cfg.model_dump().items() if not k.endswith("_prob")}
    with pytest.raises(InputError, match="augment_on='tpu'"):
        split_augmentation(cfg, "tpu")
    x = torch.rand(2, 1, 32, 32, 32)
    assert device_augment(None, x)[0] is x


def _weights(tiny, tmp_path, name, **fields):
    cfg = tiny("pretrain", out=tmp_path / name, epochs=1, **fields)
    pretrain.run(cfg)
    return load_file(str(RunDir(cfg.out).last))


def test_gpu_augmentation_runs_reproducibly_and_differs_from_the_cpu_path(tiny, tmp_path):
    a = _weights(tiny, tmp_path, "a", augment_on="gpu")
    b = _weights(tiny, tmp_path, "b", augment_on="gpu")
    c = _weights(tiny, tmp_path, "c", augment_on="cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same crops and draws
    assert any(not torch.equal(a[k], c[k]) for k in a)  # other random streams for the recipe
    # the choice is part of what the run computes: recorded in config.json, and a resume must match it
    assert json.loads(RunDir(tmp_path / "a").config_path.read_text())["augment_on"] == "gpu"
