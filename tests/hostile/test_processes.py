"""A preprocess killed mid-run (issue 18): its worker processes die with it, the cache lock goes with
them, and a rerun goes ahead. SIGTERM: workers stopped, temporary files removed, one line, exit 143.

Real processes: the installed ``hiend-data preprocess --workers 2`` in a subprocess, its workers found
through /proc (their parent is the command), the signal sent once they exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_cli import BIN, run

from hiend_data.phantom import make_phantom_dataset

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/*/stat)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _wait(cond, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("proc") / "raw", cases=2, seed=3)


def _start(raw: Path, cache: Path) -> tuple[subprocess.Popen, list[int]]:
    """``hiend-data preprocess --workers 2`` (1 mm: seconds per case), once its two workers run."""
    proc = subprocess.Popen(
        [str(BIN / "hiend-data"), "preprocess", str(raw), str(cache), "--spacing", "1", "--workers", "2",
         "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert _wait(lambda: len(_children(proc.pid)) >= 2 or proc.poll() is not None, 60)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) == 2, (proc.poll(), workers)
    time.sleep(0.5)  # the workers are at work (loading, resampling, writing)
    return proc, workers


def test_workers_die_with_a_killed_preprocess_and_a_rerun_goes_ahead(raw, tmp_path):
    cache = tmp_path / "cache"
    proc, workers = _start(raw, cache)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _wait(lambda: not any(_alive(p) for p in workers), 5), [p for p in workers if _alive(p)]
    again = run("hiend-data", "preprocess", raw, cache, "--spacing", "4", "--no-progress")
    assert again.returncode == 0, again.stderr  # the lock went with the killed writer and its workers
    assert "2 cases in" in again.stdout
    assert not [p.name for p in (cache / "cases").iterdir() if ".tmp" in p.name]


def test_sigterm_stops_the_workers_removes_temporaries_and_exits_143(raw, tmp_path):
    cache = tmp_path / "cache"
    proc, workers = _start(raw, cache)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(cache) in lines[0] and "stopped by SIGTERM" in lines[0]
    assert not any(_alive(p) for p in workers)
    assert not [p.name for p in (cache / "cases").iterdir() if p.name.startswith(".")]  # no temporaries
    again = run("hiend-data", "preprocess", raw, cache, "--spacing", "4", "--no-progress")
    assert again.returncode == 0, again.stderr
