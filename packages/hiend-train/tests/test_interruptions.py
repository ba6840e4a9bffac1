"""Runs misconfigured or pointed at other data: a field given twice, every value validated,
--resume on another cache, data with NaN named by case. (Saves interrupted between their files:
test_checkpointing.py; signals: test_signals.py; a folder whose run never saved: test_runner.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hiend_data import Plan
from hiend_data.cache import preprocess_dataset
from hiend_data.errors import InputError
from hiend_train import finetune, pretrain
from hiend_train.cli import _resolve, parse_sets


class Killed(BaseException):
    """Stands for the process dying where it is raised (nothing after it runs)."""


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# -- one field, one value ---------------------------------------------------------------------


def test_a_field_given_twice_on_the_command_line_is_an_error_naming_it():
    with pytest.raises(InputError, match=r"^lr: given twice \(--lr 0.001 and --set lr=banana\)$"):
        _resolve("pretrain", None, {"lr": 0.001}, ["lr=banana"], resume=False)
    with pytest.raises(InputError, match=r"^lr: given twice \(--set lr=1e-3 and --set lr=2e-3\)$"):
        parse_sets(["lr=1e-3", "lr=2e-3"])
    with pytest.raises(
        InputError, match=r"^model.depth: given twice \(--set model.depth=2 and --set model.depth=3\)"
    ):
        parse_sets(["model.depth=2", "model.depth=3"])
    with pytest.raises(InputError, match=r"^model.depth: given twice"):
        parse_sets(['model={"depth": 2}', "model.depth=3"])
    with pytest.raises(InputError, match=r"^progress: given twice \(--quiet and --set progress=true\)"):
        _resolve("pretrain", None, {"progress": False}, ["progress=true"], resume=False)
    with pytest.raises(
        InputError, match=r"^tensorboard: given twice \(--tensorboard and --set tensorboard=0\)"
    ):
        _resolve("pretrain", None, {"tensorboard": True}, ["tensorboard=0"], resume=False)
    # different fields, and a dotted field beside another one, are fine
    cfg = _resolve("pretrain", None, {"lr": 0.001}, ["model.depth=2", "sampler.pos=1", "epochs=3"], False)
    assert (cfg.lr, cfg.epochs, cfg.model, cfg.sampler) == (0.001, 3, {"depth": 2}, {"pos": 1})


@pytest.mark.parametrize(
    ("name", "text", "sets", "flags", "match"),
    [
        ("a.toml", 'lr = "banana"\n', [], {"lr": 1e-3}, r"a\.toml: lr: Input should be a valid number"),
        (
            "b.toml",
            "epochs = 0\n",
            ["epochs=3"],
            {},
            r"b\.toml: epochs: Input should be greater than or equal",
        ),
        (
            "c.toml",
            '[model]\ndepth = "x"\n',
            ["model.depth=2"],
            {},
            r"c\.toml: model\.depth: Input should be",
        ),
        ("d.json", '{"lr": 1e-3, "lr": "banana"}', [], {}, r"d\.json: lr: given twice"),
        ("e.json", '{"sampler": {"pos": 1, "pos": 2}}', [], {}, r"e\.json: pos: given twice"),
    ],
)
def test_every_value_given_is_validated_even_when_overridden(tmp_path, name, text, sets, flags, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        _resolve("pretrain", path, flags, sets, resume=False)


def test_the_file_is_still_overridden_by_valid_flags(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("lr = 3e-4\nepochs = 7\nclip_grad = 1.0\n[model]\ndepth = 4\n")
    cfg = _resolve("pretrain", path, {"lr": 1e-3}, ["model.depth=2", "epochs=9"], resume=False)
    assert (cfg.lr, cfg.epochs, cfg.model, cfg.clip_grad) == (1e-3, 9, {"depth": 2}, 1.0)
    # --set FIELD=null sets None (it is not dropped as "not given"), and is validated
    assert _resolve("pretrain", path, {}, ["clip_grad=null"], resume=False).clip_grad is None
    with pytest.raises(InputError, match=r"lr: Input should be a valid number"):
        _resolve("pretrain", path, {}, ["lr=null"], resume=False)


# -- --resume on another cache ----------------------------------------------------------------


@pytest.fixture(scope="module")
def other_cache(phantom_cache: Path, tmp_path_factory) -> Path:
    """The phantom cache's scans under another plan (6 mm): the same case names, other data."""
    out = tmp_path_factory.mktemp("other") / "cache6"
    preprocess_dataset(
        phantom_cache.parent / "raw", out, Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32)), workers=0,
        progress=False,
    )  # fmt: skip
    return out


def test_resume_on_another_cache_is_refused_naming_both(tiny, tmp_path, phantom_cache, other_cache):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=2, stop_after=1)
    pretrain.run(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["trained_on"]
    assert saved["cache"] == str(phantom_cache) and saved["cases"] == 6
    other = cfg.model_copy(update={"cache": other_cache, "stop_after": None})
    with pytest.raises(InputError) as info:
        pretrain.run(other, resume=True)
    message = str(info.value)
    assert "--resume on another cache" in message and "plan differ" in message
    assert str(other_cache) in message and str(phantom_cache) in message
    # the same cache at another path is the same cache
    moved = tmp_path / "moved"
    shutil.copytree(phantom_cache, moved)
    result = pretrain.run(cfg.model_copy(update={"cache": moved, "stop_after": None}), resume=True)
    assert result.fit.epochs == 2


def test_resume_on_a_cache_with_other_cases_is_refused(tiny, tmp_path, phantom_cache):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=2, stop_after=1)
    pretrain.run(cfg)
    fewer = tmp_path / "fewer"
    shutil.copytree(phantom_cache, fewer)
    for path in (fewer / "cases").glob("phantom_005*"):
        path.unlink()
    with pytest.raises(
        InputError,
        match=r"--resume on another cache: .*fewer \(plan \w+, 5 cases\) is not .*case names differ",
    ):
        pretrain.run(cfg.model_copy(update={"cache": fewer}), resume=True)


# -- NaN in the data: the case is named ---------------------------------------------------------


@pytest.fixture
def poisoned(tmp_path: Path, phantom_cache: Path):
    """``poisoned(case, every)``: a float32 cache of the phantoms in which every ``every``-th voxel of
    ``case`` is NaN (1: all of them; the sampler then finds no voxel to centre a crop on)."""

    def make(case: str, every: int = 1) -> Path:
        out = tmp_path / f"poisoned_{case}_{every}"
        plan = Plan(spacing=(4.0, 4.0, 4.0), crop_size=(32, 32, 32), cache_dtype="float32")
        preprocess_dataset(phantom_cache.parent / "raw", out, plan, workers=0, progress=False)
        path = out / "cases" / f"{case}.npy"
        image = np.load(path)
        image.reshape(-1)[::every] = np.nan
        np.save(path, image)
        return out

    return make


@pytest.mark.parametrize(
    ("kind", "every", "workers"),
    [("pretrain", 7, 0), ("pretrain", 1, 0), ("finetune", 7, 0), ("pretrain", 1, 1), ("pretrain", 7, 1)],
)
def test_nan_in_the_training_data_names_the_case_and_its_file(tiny, tmp_path, poisoned, kind, every, workers):
    cache = poisoned("phantom_002", every)
    cfg = tiny(kind, out=tmp_path / kind, cache=cache, epochs=1, workers=workers)
    with pytest.raises(InputError) as info:
        (pretrain.run if kind == "pretrain" else finetune.run)(cfg)
    message = str(info.value)
    assert message.startswith(f"{cache}: case 'phantom_002' ({cache / 'cases' / 'phantom_002.npy'}) holds")
    assert "NaN or infinite values (crops of epoch 1)" in message and "Traceback" not in message


@pytest.mark.parametrize("every", [1, 7])
def test_nan_in_a_validation_case_names_it(tiny, tmp_path, poisoned, every):
    from hiend_train.data import split_cases

    names = [f"phantom_{i:03d}" for i in range(6)]
    victim = names[split_cases(names, 0.2, 0)[1][0]]
    cache = poisoned(victim, every)
    cfg = tiny("pretrain", out=tmp_path / "run", cache=cache, epochs=1, val_fraction=0.2)
    with pytest.raises(
        InputError, match=rf"case '{victim}' .* NaN or infinite values \(crops of validation\)"
    ):
        pretrain.run(cfg)
