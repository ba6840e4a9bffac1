"""JSON from untrusted files and strings: every failure is one :class:`InputError` line naming the source.

``json.loads`` raises four different things on hostile input: ``JSONDecodeError``, ``UnicodeDecodeError``
(bytes that are not UTF-8), ``RecursionError`` (``[[[[...]]]]`` nested deeper than the interpreter's
stack; a few kilobytes suffice) and, for huge numbers, ``ValueError``. :func:`parse_json` and
:func:`read_json` turn each into "SOURCE: not valid JSON (...)" so that a command exits 2 with one line,
never a traceback. Used for dataset.json, checkpoint metadata, run configs and caches' metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["parse_json", "read_json"]


def parse_json(text: str | bytes, source: object) -> Any:
    """``json.loads(text)``; InputError naming ``source`` for anything that is not valid JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{source}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(f"{source}: not valid JSON ({exc})") from None


def read_json(path: str | os.PathLike[str], expect: type | None = None) -> Any:
    """The JSON content of the file ``path`` (InputError naming it if unreadable as JSON, or, with
    ``expect`` (e.g. ``dict``), if the top-level value is of another type)."""
    path = Path(path)
    data = parse_json(path.read_bytes(), path)
    if expect is not None and not isinstance(data, expect):
        raise InputError(
            f"{path}: expected a JSON {'object' if expect is dict else expect.__name__} at the top level"
        )
    return data
