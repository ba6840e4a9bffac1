"""Runs that are stopped, misconfigured or pointed at other data (issue 11): conflicting settings,
--resume on another cache, a save interrupted between its files, a folder whose run never saved,
data with NaN named by case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hiend_data import Plan
from hiend_data.cache import preprocess_dataset
from hiend_data.errors import InputError
from hiend_train import finetune, pretrain, runner
from hiend_train.cli import _resolve, parse_sets
from hiend_train.loop import NonFiniteLoss
from hiend_train.rundir import RunDir


class Killed(BaseException):
    """Stands for the process dying where it is raised (nothing after it runs)."""


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# -- 1. one field, one value ---------------------------------------------------------------------


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


# -- 2. --resume on another cache ----------------------------------------------------------------


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


# -- 3. a save interrupted between its two files ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "epoch", "resumed_at"),
    [("last.safetensors", 2, 1), ("state.pt", 2, 2), ("state.pt", 1, 1)],
)
def test_a_save_killed_between_its_files_resumes_to_the_uninterrupted_weights(
    tiny, tmp_path, monkeypatch, target, epoch, resumed_at
):
    """The process dies as the save at the end of ``epoch`` is about to put ``target`` in place:
    --resume continues (from that save or the one before) to the weights of a run never interrupted."""
    fields = dict(epochs=3, warmup_epochs=0.5)
    straight = pretrain.run(tiny("pretrain", out=tmp_path / "straight", **fields))
    cfg = tiny("pretrain", out=tmp_path / "run", **fields)
    run = RunDir(cfg.out)
    real_replace = os.replace
    seen: list[str] = []

    def dying_replace(src, dst, *args, **kwargs):
        dst = Path(dst)
        if dst.parent == run.root and dst.name == target:
            seen.append(dst.name)
            if len(seen) == epoch:  # one save per epoch
                raise Killed(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(Killed):
        pretrain.run(cfg)
    monkeypatch.setattr(os, "replace", real_replace)
    resumed = pretrain.run(cfg, resume=True)
    assert resumed.fit.epochs == 3 and resumed.fit.steps == straight.fit.steps
    assert_bit_identical(run.last, RunDir(straight.out).last)
    state = torch.load(run.state_path, weights_only=True)
    assert (state["epoch"], state["step"]) == (3, straight.fit.steps)
    assert not run.staged_states()  # the next save cleaned up what the interrupted one left
    resume = next(r for r in run.read_log() if r["event"] == "resume")
    assert resume["epoch"] == resumed_at


def test_a_staged_state_alone_is_a_save_that_never_happened(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    assert sorted(p.name for p in run.root.iterdir()) == [
        "config.json", "last.safetensors", "log.jsonl", "split.json", "state.pt",
    ]  # fmt: skip
    # a staged state of a save killed before its weights: last.safetensors + state.pt still agree
    state = torch.load(run.state_path, weights_only=True)
    torch.save({**state, "step": 99}, run.staged_state_path(99))
    again = pretrain.run(cfg, resume=True)
    assert again.fit.history == [] and again.fit.steps == state["step"]  # finished: nothing to do


# -- 4. a folder whose run never saved is started again ----------------------------------------------


def test_num_classes_below_the_largest_label_is_refused_before_anything_is_written(tiny, tmp_path):
    cfg = tiny("finetune", out=tmp_path / "ft", num_classes=3, epochs=1)
    with pytest.raises(
        InputError, match=r"num_classes=3: the cache .* has label 6 \(case '\w+'\); .* at least 7"
    ):
        finetune.run(cfg)
    assert not cfg.out.exists()


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again(tiny, tmp_path, monkeypatch):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1)

    def killed_after_setup(*args, **kwargs):
        raise Killed("right after setup")

    monkeypatch.setattr(runner, "fit", killed_after_setup)
    with pytest.raises(Killed):
        pretrain.run(cfg)
    monkeypatch.undo()
    run = RunDir(cfg.out)
    assert run.config_path.is_file() and [r["event"] for r in run.read_log()] == ["start", "setup"]
    with pytest.raises(
        InputError,
        match=r"nothing to resume \(the run there stopped before its first checkpoint; start it again without --resume\)",
    ):
        pretrain.run(cfg, resume=True)
    result = pretrain.run(cfg)  # a fresh start reuses the folder
    assert result.fit.epochs == 1 and run.last.is_file()
    assert [r["event"] for r in run.read_log()].count("start") == 1  # a fresh log


def test_a_run_that_diverged_before_saving_can_be_started_again_with_other_settings(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=1, lr=1e30, warmup_epochs=0)
    with pytest.raises(NonFiniteLoss):
        pretrain.run(cfg)
    (cfg.out / "previews").mkdir()  # what such a run may leave beside its config
    (cfg.out / "previews" / "epoch_0001.png").write_bytes(b"stale")
    result = pretrain.run(cfg.model_copy(update={"lr": 1e-3}))
    assert result.fit.epochs == 1 and not (cfg.out / "previews").exists()
    assert json.loads((cfg.out / "config.json").read_text())["lr"] == 1e-3
    # once a checkpoint exists the folder is a run again: never overwritten
    with pytest.raises(InputError, match="already holds a run"):
        pretrain.run(cfg.model_copy(update={"lr": 1e-3}))


# -- 6. NaN in the data: the case is named ---------------------------------------------------------


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


# -- 7. a scheduler's SIGTERM: stop at the next step with a checkpoint ------------------------------


@pytest.fixture
def request_after(monkeypatch):
    """``request_after(n)``: the stop mark is set while optimizer step ``n`` runs (as a SIGTERM
    arriving then would), counted by the loop's learning-rate lookups at each step's start."""
    import signal

    from hiend_train import loop
    from hiend_train.signals import REQUEST

    monkeypatch.setattr(REQUEST, "signum", None)
    real = loop.lr_at
    calls = {"n": 0}

    def arm(n: int) -> None:
        def lr_at(step, *args, **kwargs):
            calls["n"] += 1
            if step + 1 == n and calls["n"] > 1:  # the first lookup is the epoch's set-up, not a step
                REQUEST.request(signal.SIGTERM)
            return real(step, *args, **kwargs)

        monkeypatch.setattr(loop, "lr_at", lr_at)

    return arm


@pytest.mark.parametrize("at", [2, 3])  # inside the first epoch (3 steps each), and at its end
def test_a_signal_stops_at_the_next_step_saved_and_resume_is_exact(tiny, tmp_path, request_after, at):
    from hiend_train.signals import REQUEST

    fields = dict(epochs=3, warmup_epochs=0.5)
    straight = pretrain.run(tiny("pretrain", out=tmp_path / "straight", **fields))
    assert straight.fit.steps == 9  # 3 steps an epoch: step 3 is the first epoch's last
    cfg = tiny("pretrain", out=tmp_path / "run", **fields)
    request_after(at)
    stopped = pretrain.run(cfg)
    assert (stopped.fit.stopped, stopped.fit.signal, stopped.fit.steps) == (True, "SIGTERM", at)
    run = RunDir(cfg.out)
    state = torch.load(run.state_path, weights_only=True)
    assert state["step"] == at and (state["epoch"], state["batch"]) == ((1, 0) if at == 3 else (0, at))
    stop = [r for r in run.read_log() if r["event"] == "stop"]
    assert stop == [{**stop[0], "step": at, "signal": "SIGTERM"}]
    REQUEST.clear()
    resumed = pretrain.run(cfg, resume=True)
    assert resumed.fit.signal is None and resumed.fit.steps == straight.fit.steps
    assert_bit_identical(run.last, RunDir(straight.out).last)


def test_a_signal_at_an_epoch_end_skips_validation_and_says_so(tiny, tmp_path, request_after):
    cfg = tiny("finetune", out=tmp_path / "run", epochs=3, val_every=1, val_fraction=0.34)
    request_after(2)  # finetune: 4 training cases at batch 2 -> 2 steps an epoch
    result = finetune.run(cfg)
    assert (result.fit.signal, result.fit.steps, result.fit.epochs) == ("SIGTERM", 2, 1)
    log = RunDir(cfg.out).read_log()
    assert any(r["event"] == "warning" and "validation skipped" in r["message"] for r in log)
    assert not any("val_dice" in r for r in log if r["event"] == "epoch")
