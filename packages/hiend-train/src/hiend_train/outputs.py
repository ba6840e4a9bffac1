"""What a failed write of a run's output says: the file the user knows, and what the disk said.

A full disk, a quota or a folder gone read-only fails a write deep inside a library: ``torch.save``
raises a RuntimeError ("basic_ios::clear: iostream error", the OSError only in its context),
safetensors a SafetensorError ("... (os error 28)"), and :mod:`hiend_data.atomic` an OSError naming
its temporary file. Inside :func:`writing` each of these becomes ``OSError(errno, strerror, path)``
naming the file being written, which the command line prints as one line (``error: RUN/state.pt: no
space left on device``, exit 2: :func:`hiend_data.errors.cli_errors`). Errors that are not about the
place written (a bug) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from hiend_data.errors import USER_ERRNOS

__all__ = ["writing", "os_errno"]

_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_errno(exc: BaseException) -> int | None:
    """The errno behind ``exc`` when it is about the place written (full, read-only, no permission:
    :data:`hiend_data.errors.USER_ERRNOS`): its own, its cause's or context's (torch), or the one a
    Rust library wrote into its message (safetensors); None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = current.errno if isinstance(current, OSError) else None
        if code is None:
            match = _RUST_OS_ERROR.search(str(current))
            code = int(match.group(1)) if match else None
        if code in USER_ERRNOS:
            return code
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Around the write of ``path``: an error about the place (:func:`os_errno`) is raised again as
    ``OSError(errno, strerror, path)``, naming ``path`` rather than a temporary file or nothing."""
    try:
        yield
    except Exception as exc:
        code = os_errno(exc)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from None
