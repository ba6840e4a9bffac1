"""Hostile training runs (issue 11): settings given twice, --resume on another cache, NaN in the data,
too few classes, a run killed right after setup, SIGINT mid-run. Each refusal: exit 2, one line naming
the value or file, no traceback; each interruption leaves a run folder that resumes or starts again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hostile_cli import BIN, TINY_TRAIN, events, ok, one_line_exit_2, run

from hiend_data import Plan
from hiend_data.cache import preprocess_dataset
from hiend_data.phantom import make_phantom_dataset
from hiend_model.checkpoint import read_checkpoint_info

TINY = [*TINY_TRAIN, "--workers", "0"]
PRE = [*TINY, "--preview-every", "0"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training") / "raw"
    make_phantom_dataset(root, cases=4, seed=5)
    return root


def cache_of(raw: Path, out: Path, spacing: float = 6.0, dtype: str = "auto") -> Path:
    plan = Plan(spacing=(spacing,) * 3, crop_size=(32, 32, 32), cache_dtype=dtype)
    preprocess_dataset(raw, out, plan, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def cache(raw, tmp_path_factory) -> Path:
    return cache_of(raw, tmp_path_factory.mktemp("cache") / "c6")


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        (["--lr", "1e-3", "--set", "lr=banana"], {}, "lr: given twice (--lr 0.001 and --set lr=banana)"),
        (["--set", "epochs=1", "--set", "epochs=2"], {}, "epochs: given twice (--set epochs=1 and --set epochs=2)"),
        (["--set", "model.depth=3"], {}, "model.depth: given twice (--set model.depth=3 and --set model.depth=4)"),
        (["-q", "--set", "progress=true"], {}, "progress: given twice (--quiet and --set progress=true)"),
        (["cfg.toml", "--lr", "1e-3"], {"cfg.toml": 'lr = "banana"\n'}, "cfg.toml: lr: Input should be a valid number"),
        (["cfg.json"], {"cfg.json": '{"lr": 0.001, "lr": "banana"}'}, "cfg.json: lr: given twice"),
    ],
)  # fmt: skip
def test_a_value_given_twice_or_overridden_invalid_is_refused(cache, tmp_path, args, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in files else a for a in args]
    out = tmp_path / "run"
    proc = run("hiend-train", "pretrain", *args, "--cache", cache, "--out", out, "--epochs", "1", *PRE)
    one_line_exit_2(proc, message)
    assert not out.exists()


def test_resume_on_another_cache_is_refused_and_a_moved_cache_is_fine(raw, cache, tmp_path):
    out = tmp_path / "run"
    ok(
        run(
            "hiend-train",
            "pretrain",
            "--cache",
            cache,
            "--out",
            out,
            "--epochs",
            "2",
            "--stop-after",
            "1",
            *PRE,
        )
    )
    before = (out / "last.safetensors").read_bytes()
    other = cache_of(raw, tmp_path / "c5", spacing=5.0)  # the same scans and names, another plan
    line = one_line_exit_2(
        run("hiend-train", "pretrain", "--out", out, "--resume", "--cache", other, "-q"), "another cache"
    )
    assert str(other) in line and str(cache) in line and "plan differ" in line
    assert (out / "last.safetensors").read_bytes() == before
    moved = tmp_path / "moved"
    shutil.copytree(cache, moved)
    assert ok(run("hiend-train", "pretrain", "--out", out, "--resume", "--cache", moved, "-q"))["epochs"] == 2


def test_nan_in_the_cache_names_the_case_and_the_folder_starts_again(raw, cache, tmp_path):
    bad = cache_of(raw, tmp_path / "float", dtype="float32")
    case = bad / "cases" / "phantom_001.npy"
    image = np.load(case)
    image.reshape(-1)[::5] = np.nan
    np.save(case, image)
    out = tmp_path / "run"
    one_line_exit_2(
        run("hiend-train", "pretrain", "--cache", bad, "--out", out, "--epochs", "1", *PRE),
        f"{bad}: case 'phantom_001' ({case}) holds NaN or infinite values (crops of epoch 1)",
    )
    # the folder holds a run that never saved: --resume says so, a fresh start on a good cache reuses it
    one_line_exit_2(
        run("hiend-train", "pretrain", "--out", out, "--resume", "--cache", cache, "-q"),
        "nothing to resume (the run there stopped before its first checkpoint; start it again without --resume)",
    )
    assert (
        ok(run("hiend-train", "pretrain", "--cache", cache, "--out", out, "--epochs", "1", *PRE))["epochs"]
        == 1
    )


def test_num_classes_below_the_largest_label_is_refused_before_writing(cache, tmp_path):
    out = tmp_path / "ft"
    proc = run("hiend-train", "finetune", "--cache", cache, "--out", out, "--num-classes", "2", "--epochs", "1",
               "--feature-size", "4", "--val-fraction", "0", *TINY)  # fmt: skip
    one_line_exit_2(proc, "num_classes=2: the cache", "at least")
    assert not out.exists()


def _interactive() -> None:
    """In the child: Ctrl-C's default disposition. A test run started in the background (``cmd &``,
    ``nohup``: as CI may start it) inherits SIGINT *ignored*, and Python then installs no handler, so
    the run would never see the signal; a user's terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [str(BIN / "hiend-train"), "pretrain", "--cache", str(cache), "--out", str(out), *PRE, *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interactive
    )


def _wait_for(proc: subprocess.Popen, out: Path, test, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not any(test(r) for r in events(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.02)


def test_a_run_killed_right_after_setup_can_be_started_again(cache, tmp_path):
    out = tmp_path / "run"
    proc = _start(cache, out, "--epochs", "50", "--num-samples", "16")  # a first epoch of seconds
    _wait_for(proc, out, lambda r: r["event"] == "setup")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    saved = (out / "last.safetensors").exists()
    if saved:  # (a slow poll let it save once: then the folder resumes, which is fine too)
        args = ("--resume", "--stop-after-steps", "6")
    else:
        args = ("--epochs", "1")
        line = one_line_exit_2(
            run("hiend-train", "pretrain", "--out", out, "--resume", "-q"), "nothing to resume"
        )
        assert "start it again without --resume" in line
    assert ok(run("hiend-train", "pretrain", "--cache", cache, "--out", out, *PRE, *args))


def test_sigint_mid_run_is_one_line_exit_130_and_resume_continues(cache, tmp_path):
    out = tmp_path / "run"
    # epochs enough that only the signal ends the run (a fast machine finishes 100 before it arrives)
    proc = _start(cache, out, "--epochs", "100000", "--save-every-steps", "1", "--set", "log_every=1")
    _wait_for(proc, out, lambda r: r["event"] == "step" and r["step"] >= 3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"error: {out}: interrupted (SIGINT); the last checkpoint (epoch ")
    assert lines[0].endswith("is intact: continue with --resume")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    step = read_checkpoint_info(out / "last.safetensors").extra["hiend_train"]["step"]
    assert step >= 2  # a checkpoint after every step: the one before the step line seen, or later
    summary = ok(
        run("hiend-train", "pretrain", "--out", out, "--resume", "-q", "--stop-after-steps", step + 2)
    )
    assert summary["steps"] == step + 2
    resumed = [r for r in events(out) if r["event"] == "resume"]
    assert [r["step"] for r in resumed] == [step]


def test_sigterm_mid_run_saves_at_the_next_step_exit_143_and_resume_continues(cache, tmp_path):
    """A scheduler's SIGTERM (SLURM preemption, a time limit, Kubernetes): the run finishes the step in
    progress, saves a checkpoint there, prints one line and exits with 143; --resume continues."""
    out = tmp_path / "run"
    proc = _start(cache, out, "--epochs", "100000", "--set", "log_every=1")  # no periodic saves
    _wait_for(proc, out, lambda r: r["event"] == "step" and r["step"] >= 2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"error: {out}: stopped by SIGTERM after step ")
    assert lines[0].endswith("checkpoint saved there: continue with --resume")
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert read_checkpoint_info(out / "last.safetensors").extra["hiend_train"]["step"] == step >= 2
    stops = [r for r in events(out) if r["event"] == "stop"]
    assert [(r["step"], r["signal"]) for r in stops] == [(step, "SIGTERM")]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    summary = ok(
        run("hiend-train", "pretrain", "--out", out, "--resume", "-q", "--stop-after-steps", step + 2)
    )
    assert summary["steps"] == step + 2


def test_a_loss_that_becomes_non_finite_has_its_own_exit_code(cache, tmp_path):
    """Not bad input (2) and not a bug (1): a run whose loss blows up exits 3 with one line, and the
    run folder keeps no half-written checkpoint."""
    out = tmp_path / "blown"
    proc = run("hiend-train", "pretrain", "--cache", cache, "--out", out, "--epochs", "1", "--lr", "1e30",
               "--warmup-epochs", "0", "--workers", "0", "-q", *PRE)  # fmt: skip
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "non-finite" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
