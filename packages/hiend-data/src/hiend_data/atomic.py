"""Atomic, durable file writes: the one way every hiend package writes a file that must be whole.

A reader sees either the old file or the complete new one, never a partial one, after a crash, a
``kill -9`` or a power cut:

1. the content goes to a temporary file in the destination's own folder (same file system, so the
   rename is atomic), named ``.{name}.{random}.tmp{suffix}`` (the suffix kept so that libraries that
   choose a format by file name, nibabel's ``.nii.gz`` for one, write the right one). The temporary
   name is bounded whatever the destination's: a name longer than :data:`MAX_TEMP_STEM` bytes is
   replaced by its hash (``.h{sha256[:16]}.{random}.tmp{suffix}``) and a suffix longer than
   :data:`MAX_TEMP_SUFFIX` bytes is left out, so a destination name of up to 255 bytes (the file
   systems' limit) never gets a temporary name over it;
2. the temporary file is flushed and ``os.fsync``-ed (its bytes are on disk before its name is);
3. ``os.replace`` renames it over the destination;
4. the folder is fsync-ed (the rename itself is on disk);
5. on any failure, the temporary file is removed and the destination is left as it was.

Every ``OSError`` a write raises (a full disk's ENOSPC from ``write``/``fsync``, EACCES, EROFS, ...)
names the destination (its ``filename``), never the temporary file or nothing, so that a command's one
error line says which output could not be written (``hiend_data.errors.cli_errors``). A destination
below a symbolic-link loop is an :class:`~hiend_data.errors.InputError` naming it
(:func:`check_output_path`).

:func:`atomic_path` yields the temporary path for writers that take a file name (nibabel, safetensors,
``torch.save``); :func:`atomic_open` yields an open file; :func:`write_bytes` / :func:`write_text` are the
one-liners. The file's permissions follow the process umask like a plain ``open(path, "w")``
(it is created 0600, then given those). The temporary's name is chosen before the file is created, so
an interruption (Ctrl-C, SIGTERM raised as an exception) at any instant leaves no temporary behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import InputError

__all__ = ["atomic_path", "atomic_open", "write_bytes", "write_text", "fsync_dir", "check_output_path"]

#: the longest destination name (UTF-8 bytes) kept readable in its temporary file's name
MAX_TEMP_STEM = 120
#: the longest suffix (UTF-8 bytes) kept in a temporary file's name
MAX_TEMP_SUFFIX = 16


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _suffix(name: str) -> str:
    """``"x.nii.gz"`` -> ``".nii.gz"``, ``"a.b.json"`` -> ``".json"``, ``"x"`` -> ``""``."""
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _temp_affixes(name: str) -> tuple[str, str]:
    """The temporary name's (prefix, suffix) for a destination named ``name``: at most
    ``1 + MAX_TEMP_STEM + 1`` and ``4 + MAX_TEMP_SUFFIX`` bytes, whatever ``name`` is."""
    stem = name
    if len(name.encode("utf-8", "surrogateescape")) > MAX_TEMP_STEM:
        stem = "h" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    suffix = _suffix(name)
    if len(suffix.encode("utf-8", "surrogateescape")) > MAX_TEMP_SUFFIX:
        suffix = ""
    return f".{stem}.", f".tmp{suffix}"


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if it can be looked up; InputError naming it when it, or a folder
    above it, is a symbolic-link loop (ELOOP: every write below it would fail). A path that does not
    exist yet is fine (its writer creates it); other errors are left to the writer."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{path}: a symbolic-link loop (too many levels of symbolic links); choose another path"
            ) from None
    return path


def _name_destination(exc: OSError, path: Path, tmp: str | None) -> None:
    """Make ``exc`` name ``path`` when it names nothing or only the temporary file ``tmp``."""
    if exc.filename is None or (tmp is not None and os.fspath(exc.filename) == tmp):
        exc.filename = str(path)
        exc.filename2 = None


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

    An ``OSError`` (ENOSPC, EACCES, ...) that names no file or only the temporary one is re-raised
    naming ``path``; ``path`` below a symbolic-link loop is an InputError naming it.
    """
    path = check_output_path(path)
    prefix, suffix = _temp_affixes(path.name)
    try:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _name_destination(exc, path, None)
        raise
    tmp: str | None = None
    try:
        # The name is chosen before the file exists, so a signal (KeyboardInterrupt, a SIGTERM turned
        # into an exception) at any point after creation is inside this block's clean-up.
        for _ in range(100):
            candidate = os.path.join(path.parent, f"{prefix}{secrets.token_hex(4)}{suffix}")
            try:
                tmp = candidate  # before the file exists: the clean-up below sees it however we leave
                os.close(os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                tmp = None
            except OSError as exc:
                tmp = None
                exc.filename = str(path)  # EACCES, ENOSPC, ...: the destination's folder, not the name
                raise
        else:  # pragma: no cover - 100 collisions of 32 random bits
            raise FileExistsError(17, "no free temporary name", str(path))
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        if not os.path.exists(tmp):
            raise FileNotFoundError(2, "the writer left no file to rename into place", tmp)
        # again: a writer that replaced the file by name (safetensors creates it 0600) lost the mode
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            _name_destination(exc, path, tmp)
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
