"""Two writers on one cache (issue 11): a second `hiend-data preprocess` on a cache another one is
writing is refused with one line naming the cache, and leaves the first one's work alone."""

from __future__ import annotations

import fcntl

from hostile_cli import run

from hiend_data.phantom import make_phantom_dataset


def test_a_second_preprocess_on_a_cache_being_written_is_refused(tmp_path):
    raw = make_phantom_dataset(tmp_path / "raw", cases=2, seed=4)
    cache = tmp_path / "cache"
    first = run("hiend-data", "preprocess", raw, cache, "--spacing", "6")
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in (cache / "cases").iterdir()}
    # another writer holds the cache (as a running preprocess does): take its lock here
    with open(cache / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.truncate(0)
        fh.write("pid 12345")
        fh.flush()
        second = run("hiend-data", "preprocess", raw, cache, "--spacing", "5")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr
    assert "cache: another preprocess is writing this cache (pid 12345)" in lines[0]
    assert {p: p.read_bytes() for p in (cache / "cases").iterdir()} == before  # nothing touched
    # released (the writer finished or died): the next run goes ahead
    third = run("hiend-data", "preprocess", raw, cache, "--spacing", "5")
    assert third.returncode == 0, third.stderr
