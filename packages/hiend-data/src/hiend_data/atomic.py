"""Atomic, durable file writes: the one way every hiend package writes a file that must be whole.

A reader sees either the old file or the complete new one, never a partial one, after a crash, a
``kill -9`` or a power cut:

1. the content goes to a temporary file in the destination's own folder (same file system, so the
   rename is atomic), named ``.{name}.{random}.tmp{suffix}`` (the suffix kept so that libraries that
   choose a format by file name, nibabel's ``.nii.gz`` for one, write the right one);
2. the temporary file is flushed and ``os.fsync``-ed (its bytes are on disk before its name is);
3. ``os.replace`` renames it over the destination;
4. the folder is fsync-ed (the rename itself is on disk);
5. on any failure, the temporary file is removed and the destination is left as it was.

:func:`atomic_path` yields the temporary path for writers that take a file name (nibabel, safetensors,
``torch.save``); :func:`atomic_open` yields an open file; :func:`write_bytes` / :func:`write_text` are the
one-liners. The file's permissions follow the process umask like a plain ``open(path, "w")``
(``mkstemp`` alone would create it 0600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_open", "write_bytes", "write_text", "fsync_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _suffix(name: str) -> str:
    """``"x.nii.gz"`` -> ``".nii.gz"``, ``"a.b.json"`` -> ``".json"``, ``"x"`` -> ``""``."""
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so that a rename inside it is on disk (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows, or a file system that does not allow it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; after the block, make it ``path`` atomically and durably.

    The block writes the whole file to the yielded path (by name). If the block raises, or the block
    leaves no file there, nothing is renamed, the temporary file is removed, and ``path`` keeps its old
    content (or stays absent). ``mkdir``: create ``path``'s parent folders first.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{_suffix(path.name)}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        if not os.path.exists(tmp):
            raise FileNotFoundError(2, "the writer left no file to rename into place", tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing, atomically: ``with atomic_open(p, "w") as f: f.write(...)``.

    ``mode`` is ``"w"``/``"wb"`` (or ``"x"``-free variants of them); ``kwargs`` go to :func:`open`
    (``encoding``, ``newline``). The file is flushed before it is renamed into place.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open: mode {mode!r} must start with 'w'")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``encoding``, default UTF-8); returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)
