"""Atomic, durable writes (hiend_data.atomic) and every hiend-data writer built on them.

Each failure is forced in the middle of a write (part of the file already written): the exception must
reach the caller, the folder must hold no temporary file, and the previous target must be byte-equal.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hiend_data import Plan, Volume, load_volume, save_volume
from hiend_data import atomic as atomic_mod
from hiend_data import cache as cache_mod
from hiend_data.atomic import atomic_open, atomic_path, write_bytes, write_text
from hiend_data.cache import preprocess_dataset, process_case
from hiend_data.discovery import Case
from hiend_data.phantom import make_phantom_dataset

DISK_FULL = OSError(28, "No space left on device")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def events(monkeypatch):
    """Record ``os.fsync`` (kind of the fd: file / dir, and its inode) and ``os.replace`` calls, in order."""
    log: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        log.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _assert_synced(log: list, path: Path) -> None:
    """``path`` (same inode as its temporary file) and its folder were fsync-ed."""
    assert ("fsync-file", path.stat().st_ino) in log, f"{path} not fsync-ed"
    assert ("fsync-dir", path.parent.stat().st_ino) in log, f"{path.parent} not fsync-ed"


def _fail_replace_of(monkeypatch, suffix: str) -> None:
    """``os.replace`` raises (after the temporary file is complete) for targets ending in ``suffix``."""
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(suffix):
            raise DISK_FULL
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


# ---------------------------------------------------------------------------------------- atomic.py


def test_atomic_path_order_fsync_file_replace_fsync_dir(tmp_path, events):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp.bin")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    ino, dir_ino = target.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync-file", ino), ("replace", "out.bin"), ("fsync-dir", dir_ino)]
    assert _listing(tmp_path) == ["out.bin"]


def test_atomic_path_keeps_nifti_suffix_and_makes_folders(tmp_path):
    target = tmp_path / "a" / "b" / "x.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"1")
    assert target.read_bytes() == b"1"


def test_atomic_path_failure_mid_write(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content")
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise DISK_FULL
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["out.bin"]


def test_atomic_path_writer_left_no_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="left no file"), atomic_path(target) as tmp:
        tmp.unlink()
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_atomic_path_failure_after_write(tmp_path, monkeypatch, fail):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(*args):
        raise DISK_FULL

    monkeypatch.setattr(os, fail, boom)
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        tmp.write_bytes(b"complete new content")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.bin"]


def test_atomic_open_failure_mid_write(tmp_path):
    target = tmp_path / "log.txt"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "w") as fh:
        fh.write("partial line")
        fh.flush()
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old\n"
    assert _listing(tmp_path) == ["log.txt"]
    with pytest.raises(ValueError, match="must start with 'w'"), atomic_open(target, "a"):
        pass
    assert _listing(tmp_path) == ["log.txt"]


def test_atomic_open_and_write_bytes(tmp_path, events):
    target = tmp_path / "x.bin"
    with atomic_open(target, "wb") as fh:
        fh.write(b"ab")
        fh.write(b"cd")
    assert target.read_bytes() == b"abcd"
    _assert_synced(events, target)
    assert write_bytes(target, b"\x00\x01") == target and target.read_bytes() == b"\x00\x01"


class _HalfWriter:
    """An open file whose ``write`` writes half of what it is given, flushes it, then fails (disk full)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise DISK_FULL

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.mark.parametrize(
    ("write", "data"), [(write_text, '{"new": 2}\n' * 100), (write_bytes, b"\x00\xff" * 100)]
)
def test_write_text_and_bytes_failure_mid_write(tmp_path, monkeypatch, write, data):
    target = tmp_path / "meta.json"
    target.write_text('{"old": 1}\n')
    opened = []

    def half_open(file, *args, **kwargs):
        opened.append(Path(file))
        return _HalfWriter(open(file, *args, **kwargs))

    monkeypatch.setattr(atomic_mod, "open", half_open, raising=False)  # the file object atomic.py writes to
    with pytest.raises(OSError, match="No space left"):
        write(target, data)
    assert opened and opened[0].parent == tmp_path and opened[0] != target
    assert target.read_bytes() == b'{"old": 1}\n'
    assert _listing(tmp_path) == ["meta.json"]


def test_write_text_unencodable(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text('{"old": 1}\n')
    with pytest.raises(UnicodeEncodeError):
        write_text(target, "x" * 1000 + "\udcff")
    assert target.read_bytes() == b'{"old": 1}\n'
    assert _listing(tmp_path) == ["meta.json"]


def test_write_text_durable_utf8_and_umask(tmp_path, events):
    target = tmp_path / "t.txt"
    old = os.umask(0o027)
    try:
        assert write_text(target, "Größe 1.5 mm\n") == target
    finally:
        os.umask(old)
    assert target.read_bytes() == "Größe 1.5 mm\n".encode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # like open(path, "w"), not mkstemp's 0600
    _assert_synced(events, target)


# --------------------------------------------------------------------------------------- the writers


@pytest.fixture
def volume(nii, tmp_path) -> Volume:
    return load_volume(
        nii.write(tmp_path / "src" / "ct.nii.gz", nii.tiny_ct(), np.diag([1.5, 1.5, 3.0, 1.0]))
    )


@pytest.mark.parametrize("name", ["pred.nii.gz", "pred.nii"])
def test_save_volume_durable(tmp_path, volume, events, name):
    target = save_volume(tmp_path / "out" / name, volume.array, like=volume)
    _assert_synced(events, target)
    np.testing.assert_array_equal(load_volume(target).array, volume.array)
    assert _listing(target.parent) == [name]


@pytest.mark.parametrize("name", ["pred.nii.gz", "pred.nii"])
def test_save_volume_failure_mid_write(tmp_path, volume, monkeypatch, name):
    target = save_volume(tmp_path / "out" / name, volume.array, like=volume)
    before = target.read_bytes()

    def partial_save(img, filename):
        assert Path(filename).name.endswith(".tmp" + (".nii.gz" if name.endswith(".gz") else ".nii"))
        Path(filename).write_bytes(before[: len(before) // 2])  # half a file, then the disk is full
        raise DISK_FULL

    monkeypatch.setattr(nib, "save", partial_save)
    with pytest.raises(OSError, match="No space left"):
        save_volume(target, volume.array + 1, like=volume)
    assert target.read_bytes() == before
    assert _listing(target.parent) == [name]


def test_save_volume_failure_at_rename(tmp_path, volume, monkeypatch):
    target = save_volume(tmp_path / "pred.nii.gz", volume.array, like=volume)
    before = target.read_bytes()
    _fail_replace_of(monkeypatch, "pred.nii.gz")
    with pytest.raises(OSError, match="No space left"):
        save_volume(target, volume.array + 1, like=volume)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["pred.nii.gz"]


@pytest.fixture
def case(nii, tmp_path) -> Case:
    ct = nii.tiny_ct((14, 12, 9), seed=3)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    img = nii.write(tmp_path / "raw" / "c0_0000.nii.gz", ct, aff)
    lab = nii.write(tmp_path / "raw" / "c0.nii.gz", nii.tiny_label(ct), aff, dtype=np.uint8)
    return Case("c0", [img], lab)


CASE_FILES = ["c0.json", "c0.npy", "c0_cls.npy", "c0_fg.npy", "c0_seg.npy"]


def test_cache_case_writes_durable(tmp_path, case, events):
    out = tmp_path / "cache"
    process_case(case, out, Plan())
    folder = out / "cases"
    assert _listing(folder) == CASE_FILES
    for name in CASE_FILES:
        _assert_synced(events, folder / name)
    assert [e[1] for e in events if e[0] == "replace"][-1] == "c0.json"  # the metadata lands last


def test_cache_case_failure_mid_array_write(tmp_path, case, monkeypatch):
    out = tmp_path / "cache"
    preprocess_dataset([case], out, Plan(), workers=0, progress=False)
    folder = out / "cases"
    before = _tree(folder)
    real_save = np.save
    written = []

    def partial_save(fh, arr, **kwargs):
        if written:  # the image array is written whole, the next one (the label) only half
            fh.write(b"\x93NUMPY half")
            raise DISK_FULL
        written.append(fh.name)
        real_save(fh, arr, **kwargs)

    monkeypatch.setattr(np, "save", partial_save)
    with pytest.raises(OSError, match="No space left"):
        process_case(case, out, Plan())
    # no temporary file; every array byte-equal (the rewritten image is the same preprocessing); the
    # metadata was removed first by design, so the case is incomplete and not listed, never half-written
    assert _listing(folder) == [n for n in CASE_FILES if n != "c0.json"]
    assert _tree(folder) == {k: v for k, v in before.items() if k != "c0.json"}
    assert cache_mod.Cache.open(out).cases == []


def test_cache_metadata_and_plan_failure_at_rename(tmp_path, case, monkeypatch):
    out = tmp_path / "cache"
    preprocess_dataset([case], out, Plan(), workers=0, progress=False)
    before = _tree(out)
    _fail_replace_of(monkeypatch, ".json")
    with pytest.raises(OSError, match="No space left"):
        preprocess_dataset([case], out, Plan(spacing=(2.5, 2.5, 2.5)), workers=0, progress=False)
    assert _tree(out) == before  # plan.json is the first write: the old cache is untouched
    with pytest.raises(OSError, match="No space left"):
        process_case(case, out, Plan(spacing=(2.5, 2.5, 2.5)))
    assert "c0.json" not in _listing(out / "cases")
    assert not [n for n in _listing(out / "cases") if n.startswith(".")]
    assert (out / "plan.json").read_bytes() == before["plan.json"]


def test_cache_cleanup_matches_atomic_temporaries(tmp_path, case, monkeypatch):
    out = tmp_path / "cache"
    # a process killed between writing and renaming: atomic.py's temporary stays (no cleanup ran)
    monkeypatch.setattr(atomic_mod.os, "unlink", lambda path: None)
    _fail_replace_of(monkeypatch, "_seg.npy")
    with pytest.raises(OSError):
        preprocess_dataset([case], out, Plan(), workers=0, progress=False)
    left = [n for n in _listing(out / "cases") if n.startswith(".")]
    assert len(left) == 1 and left[0].startswith(".c0_seg.npy.") and left[0].endswith(".tmp.npy")
    (out / "cases" / ".c0_fg.npy.tmp-4242").write_bytes(b"from an older hiend-data")
    monkeypatch.undo()
    cache = preprocess_dataset([case], out, Plan(), workers=0, progress=False)
    assert cache.cases == ["c0"]
    assert _listing(out / "cases") == CASE_FILES


def test_phantom_durable_and_failures(tmp_path, monkeypatch, events):
    out = tmp_path / "ph"
    make_phantom_dataset(out, cases=1, seed=0)
    for name in ("dataset.json", "imagesTr/phantom_000_0000.nii.gz", "labelsTr/phantom_000.nii.gz"):
        _assert_synced(events, out / name)
    before = (out / "dataset.json").read_bytes()
    assert json.loads(before)["numTraining"] == 1

    # dataset.json fails at its rename: the earlier one stays, byte for byte
    _fail_replace_of(monkeypatch, "dataset.json")
    with pytest.raises(OSError, match="No space left"):
        make_phantom_dataset(out, cases=2, seed=1, overwrite=True)
    assert (out / "dataset.json").read_bytes() == before
    assert not [p for p in out.rglob(".*")]
    monkeypatch.undo()

    # an image fails half-written: no temporary file, dataset.json untouched
    def partial_save(img, filename):
        Path(filename).write_bytes(b"\x1f\x8b half")
        raise DISK_FULL

    monkeypatch.setattr(nib, "save", partial_save)
    with pytest.raises(OSError, match="No space left"):
        make_phantom_dataset(out, cases=2, seed=1, overwrite=True)
    assert (out / "dataset.json").read_bytes() == before
    assert not [p for p in out.rglob(".*")]


# ------------------------------------------------------------------ bounded names, errors naming the output


@pytest.mark.parametrize("name", ["肝" * 80 + "_0000.nii.gz", "a" * 255, "x." + "b" * 250])
def test_a_255_byte_destination_name_gets_a_bounded_temporary_name(tmp_path, name):
    assert len(name.encode()) >= 252
    target = tmp_path / name
    with atomic_path(target) as tmp:
        assert len(tmp.name.encode()) <= 160 and tmp.parent == tmp_path
        assert tmp.name.endswith(".tmp.nii.gz") == name.endswith(".nii.gz")  # a short suffix is kept
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    write_text(target, "again")  # write_text / write_bytes / atomic_open: the same writer
    assert target.read_text() == "again" and _listing(tmp_path) == [name]


def test_short_names_stay_readable_in_the_temporary_name(tmp_path):
    with atomic_path(tmp_path / "summary.json") as tmp:
        assert tmp.name.startswith(".summary.json.") and tmp.name.endswith(".tmp.json")
        tmp.write_text("{}")


@pytest.mark.parametrize("named", [None, "temporary"])
def test_an_oserror_names_the_destination(tmp_path, monkeypatch, named):
    """ENOSPC from fsync (the kernel names no file) or naming the temporary file: the error names the
    destination, which is what a command's one line shows."""
    target = tmp_path / "out" / "result.json"

    def full(path):
        raise OSError(28, "No space left on device", *([str(path)] if named else []))

    monkeypatch.setattr(atomic_mod, "_fsync_file", full)
    with pytest.raises(OSError) as err:
        write_text(target, "{}")
    assert err.value.errno == 28 and err.value.filename == str(target)
    assert _listing(target.parent) == []


def test_an_oserror_mid_write_names_the_destination(tmp_path):
    target = tmp_path / "cases" / "c.npy"
    with pytest.raises(OSError) as err, atomic_open(target, "wb") as fh:
        fh.write(b"half")
        raise OSError(28, "No space left on device")  # what a full disk's write() raises
    assert err.value.filename == str(target) and _listing(target.parent) == []


def test_an_output_below_a_symlink_loop_is_an_input_error(tmp_path):
    from hiend_data.atomic import check_output_path
    from hiend_data.errors import InputError

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for target in (loop, loop / "x.json"):
        with pytest.raises(InputError, match=rf"^{target}: a symbolic-link loop"):
            write_text(target, "{}")
    assert check_output_path(tmp_path / "new" / "x") == tmp_path / "new" / "x"  # not there yet: fine


def test_a_writer_that_recreates_the_file_by_name_still_gets_the_umask(tmp_path):
    """safetensors (and any writer that removes and recreates the file) makes it 0600; colleagues
    sharing a run folder must read the checkpoint as the umask says."""
    from hiend_data.atomic import atomic_path

    target = tmp_path / "w.safetensors"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"x")
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
