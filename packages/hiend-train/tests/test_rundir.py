"""The run folder (hiend_train.rundir): one run per folder (its lock), output places checked before a run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hiend_data.errors import InputError
from hiend_train import pretrain
from hiend_train.rundir import RunDir, RunLock


def test_a_held_folder_is_refused_naming_the_holder_and_release_leaves_nothing(tmp_path):
    root = tmp_path / "a" / "run"
    with RunLock(root):
        assert (root / ".lock").read_text() == f"pid {os.getpid()}\n"
        with pytest.raises(
            InputError,
            match=rf"^{root}: another hiend-train run \(pid {os.getpid()}, this process\) is using",
        ):
            RunLock(root).acquire()  # (the POSIX lock alone would let its own process in)
    assert not (tmp_path / "a").exists()  # the folders it made, empty: removed
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    with RunLock(root):
        pass
    assert sorted(p.name for p in root.iterdir()) == ["config.json"]


def test_a_lock_is_not_kept_by_forked_children_of_a_holder_that_died(tmp_path):
    """The holder forks (a DataLoader worker) and dies with kill -9; the child lives on: the folder
    is free at once."""
    root = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from hiend_train.rundir import RunLock
        RunLock({str(root)!r}).acquire()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()
    try:
        assert Path(f"/proc/{child}").exists()  # still alive, with the lock file open
        lock = RunLock(root).acquire()
        assert (root / ".lock").read_text().startswith("pid ")
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_every_output_place_is_checked_before_the_run_writes(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", tensorboard=True)
    cfg.out.mkdir()
    (cfg.out / "tb").write_text("not a folder")
    with pytest.raises(InputError, match=r"/tb: exists and is not a folder"):
        pretrain.run(cfg)
    assert sorted(p.name for p in cfg.out.iterdir()) == ["tb"]
    RunDir(cfg.out).check_outputs(cfg.model_copy(update={"tensorboard": False}))  # not written: fine
    (cfg.out / "tb").unlink()
    (cfg.out / "state.pt").mkdir()
    with pytest.raises(InputError, match=r"/state.pt: exists and is not a file"):
        RunDir(cfg.out).check_outputs(cfg)


def test_a_run_folder_of_an_older_version_saying_kind_resumes(tiny, tmp_path):
    cfg = tiny("pretrain", out=tmp_path / "run", epochs=2, stop_after=1)
    pretrain.run(cfg)
    run = RunDir(cfg.out)
    saved = json.loads(run.config_path.read_text())
    assert saved["stage"] == "pretrain"
    saved["kind"] = saved.pop("stage")  # config.json as written before the field was named stage
    run.config_path.write_text(json.dumps(saved))
    assert run.saved_config()["stage"] == "pretrain" and "kind" not in run.saved_config()
    result = pretrain.run(cfg.model_copy(update={"stop_after": None}), resume=True)
    assert result.fit.epochs == 2
