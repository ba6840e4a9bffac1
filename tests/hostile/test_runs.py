"""Hostile runs and processes (issue 18): two runs on one folder, a scheduler's SIGTERM to the whole
process group (DataLoader workers included), a full disk at a checkpoint, NaN or infinity in any config
field, an output place that cannot take what goes there, a run folder whose name holds terminal
escapes. Each refusal: exit 2, one line naming the folder, file or value, nothing written; each stop
leaves a checkpoint that loads and resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hostile_cli import BIN, TINY_TRAIN, events, ok, one_line_exit_2, run
from safetensors.torch import load_file

from hiend_data import Plan
from hiend_data.cache import preprocess_dataset
from hiend_data.phantom import make_phantom_dataset
from hiend_model.checkpoint import read_checkpoint_info

TINY = TINY_TRAIN
PRE = [*TINY, "--preview-every", "0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_phantom_dataset(root / "raw", cases=4, seed=5)
    plan = Plan(spacing=(6.0,) * 3, crop_size=(32, 32, 32))
    preprocess_dataset(root / "raw", root / "cache", plan, workers=0, progress=False)
    return root / "cache"


def start(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``hiend-train pretrain`` in a process group of its own (as a scheduler starts a job)."""
    cmd = [str(BIN / "hiend-train"), "pretrain", "--cache", str(cache), "--out", str(out), *PRE, *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not any(r["event"] == "step" and r["step"] >= step for r in events(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.02)


@contextlib.contextmanager
def ended(proc: subprocess.Popen):
    """Whatever the test does, the run's process group is gone afterwards."""
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


# -- 1. one run per folder -----------------------------------------------------------------------


def test_a_second_run_on_a_busy_folder_is_refused_and_a_dead_holder_blocks_nothing(cache, tmp_path):
    out = tmp_path / "run"
    with ended(start(cache, out, "--epochs", "100000", "--workers", "2", "--set", "log_every=1",
                     "--save-every-steps", "1")) as first:  # fmt: skip
        wait_for_step(first, out, 2)
        before = events(out)
        for kind, extra in (("pretrain", PRE), ("finetune", TINY)):
            line = one_line_exit_2(
                run("hiend-train", kind, "--cache", cache, "--out", out, "--epochs", "1", *extra),
                f"{out}: another hiend-train run (pid {first.pid}) is using this run folder",
            )
            assert "choose another --out" in line
        assert events(out)[: len(before)] == before  # the first run's log is whole
        # the holder dies (kill -9 of the main process alone: its DataLoader workers linger a moment)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert (out / ".lock").is_file()  # left behind, and taken over at once
        step = read_checkpoint_info(out / "last.safetensors").extra["hiend_train"]["step"]
        summary = ok(
            run("hiend-train", "pretrain", "--out", out, "--resume", "-q", "--stop-after-steps", step + 1)
        )
    assert summary["steps"] == step + 1
    assert not (out / ".lock").exists()


# -- 2. SIGTERM to the whole process group -------------------------------------------------------


def test_sigterm_to_the_process_group_with_workers_saves_exits_143_and_resumes(cache, tmp_path):
    """SLURM and Kubernetes signal every process of the job: the DataLoader workers ignore it, the
    main process saves at the next step and exits 143. The folder's name holds a terminal escape: the
    line shows it escaped."""
    out = tmp_path / "run\x1b[2J"
    with ended(start(cache, out, "--epochs", "100000", "--workers", "2", "--set", "log_every=1")) as proc:
        wait_for_step(proc, out, 2)
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr and "\x1b" not in stderr, stderr
    shown = str(out).replace("\x1b", "\\x1b")
    assert lines[0].startswith(f"error: {shown}: stopped by SIGTERM after step ")
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert read_checkpoint_info(out / "last.safetensors").extra["hiend_train"]["step"] == step >= 2
    assert load_file(str(out / "last.safetensors"))  # the weights load
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "last.safetensors", "log.jsonl", "split.json", "state.pt"
    ]  # fmt: skip
    summary = ok(
        run("hiend-train", "pretrain", "--out", out, "--resume", "-q", "--stop-after-steps", step + 2)
    )
    assert summary["steps"] == step + 2


# -- 3. a full disk at a checkpoint --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (root only: skipped where it cannot be mounted)."""
    where = tmp_path / "disk"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(cache, small_disk):
    out = small_disk / "run"
    ok(run("hiend-train", "pretrain", "--cache", cache, "--out", out, "--epochs", "3", "--stop-after", "1",
           "--workers", "0", *PRE))  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "log.jsonl"}
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 300_000))  # room for log lines, not a checkpoint
    line = one_line_exit_2(
        run("hiend-train", "pretrain", "--out", out, "--resume", "-q"), f"{out}/", ": no space left on device"
    )
    assert "the previous one (epoch 1, step 4) is intact" in line and "--resume" in line
    assert {
        p.name: p.read_bytes() for p in out.iterdir() if p.name != "log.jsonl"
    } == before  # no temporaries
    (small_disk / "filler").unlink()
    assert ok(run("hiend-train", "pretrain", "--out", out, "--resume", "-q"))["epochs"] == 3


# -- 4. NaN or infinity in a config field --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "args", "files", "message"),
    [
        ("pretrain", ["--lr", "inf"], {}, "command line: lr: inf is not a finite number"),
        ("pretrain", ["--set", "warmup_epochs=Infinity"], {}, "command line: warmup_epochs: inf is not"),
        ("pretrain", ["--set", "model.mlp_ratio=NaN"], {}, "command line: model.mlp_ratio: nan is not"),
        ("pretrain", ["--set", "sampler.pos=inf"], {}, "command line: sampler.pos: inf is not"),
        ("pretrain", ["cfg.toml"], {"cfg.toml": "min_lr = nan\n"}, "cfg.toml: min_lr: nan is not"),
        ("pretrain", ["cfg.json"], {"cfg.json": '{"betas": [0.9, -Infinity]}'}, "cfg.json: betas[1]: -inf is"),
        ("finetune", ["--set", "class_weights=[1,NaN]"], {}, "command line: class_weights[1]: nan is not"),
    ],
)  # fmt: skip
def test_nan_or_infinity_in_any_field_is_refused_before_writing(cache, tmp_path, kind, args, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in files else a for a in args]
    out = tmp_path / "run"
    extra = PRE if kind == "pretrain" else TINY
    proc = run("hiend-train", kind, *args, "--cache", cache, "--out", out, "--epochs", "1", *extra)
    one_line_exit_2(proc, message)
    assert not out.exists()


# -- 5. output places checked before anything is written -------------------------------------------


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda out: (out / "tb").write_text("x"), ["--tensorboard"], "tb: exists and is not a folder"),
        (lambda out: (out / "last.safetensors").mkdir(), [], "last.safetensors: exists and is not a file"),
        (
            lambda out: (out / "checkpoints").write_text("x"),
            ["--save-every-steps", "1"],
            "checkpoints: exists",
        ),
    ],
)
def test_an_output_place_that_cannot_take_its_output_is_refused_at_startup(
    cache, tmp_path, make, extra, message
):
    out = tmp_path / "run"
    out.mkdir()
    make(out)
    before = sorted(p.name for p in out.iterdir())
    proc = run("hiend-train", "pretrain", "--cache", cache, "--out", out, "--epochs", "1", *PRE, *extra)
    one_line_exit_2(proc, f"{out}/", message)
    assert sorted(p.name for p in out.iterdir()) == before  # no config.json, no log, no lock
