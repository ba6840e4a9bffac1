"""Errors that mean "the user gave us something wrong" and how command lines report them.

Every package raises :class:`InputError` (or a subclass) for bad input: a file that is not what it
claims, a value out of range, geometry that disagrees. Its message is one line that names the file or
value and says what is wrong. Command lines wrap their work in :func:`cli_errors`, which turns an
``InputError`` into that line on stderr and exit code 2 (DESIGN.md, "Exit codes"). Output places the
user chose that cannot be written (a read-only or full folder, a file where a folder is wanted, a
missing file) are bad input too: the same one line naming the path and exit 2. Anything else is a bug
and exits 1 with a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

import typer
from typer.core import TyperGroup


def shown(text: object) -> str:
    """``text`` made safe to print on a terminal: every control or format character (ESC, BEL, CR,
    newline, DEL, C1 controls, bidirectional overrides, line separators) becomes a visible escape such
    as ``\\x1b`` or ``\\u202e``; everything else (accents, CJK) stays as it is. Apply it to anything a user
    or a file supplied (names, labels, metadata, paths) before it reaches stdout or stderr."""
    out = []
    for ch in str(text):
        if ch.isprintable() or unicodedata.category(ch) == "Zs":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
            )
    return "".join(out)


def markup(text: object) -> str:
    """``text`` for a rich renderable or ``Console.print`` with markup on: :func:`shown`, then rich's
    markup escape, so ``[/bold]`` or ``a[@click=(]b`` prints as written and never parses as markup."""
    from rich.markup import escape

    return escape(shown(text))


class InputError(ValueError):
    """Bad input from the user: a file, a value or a combination that cannot be used."""

    def __init__(self, message: str) -> None:
        # One line, always: newlines would break "one line on stderr".
        super().__init__(" ".join(str(message).split()))


def from_validation_error(exc: Any, prefix: str, known_fields: Iterable[str] | None = None) -> InputError:
    """A pydantic ``ValidationError`` as one :class:`InputError` line: ``prefix: field: message; ...``.

    ``known_fields``, when given, turns "extra inputs are not permitted" into the list of known fields.
    Raise the result ``from None`` so the multi-line pydantic report stays out of the way.
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and known_fields is not None:
            msg = f"unknown field (known: {', '.join(sorted(known_fields))})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return InputError(f"{prefix}: " + "; ".join(parts))


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn :class:`InputError` (and FileNotFoundError) into one stderr line and exit code 2."""
    try:
        yield
    except InputError as exc:
        print(f"error: {shown(exc)}", file=sys.stderr)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        name = exc.filename if exc.filename is not None else str(exc)
        print(f"error: {shown(name)}: no such file or directory", file=sys.stderr)
        raise typer.Exit(2) from None
    except OSError as exc:
        if not _users_fault(exc):
            raise
        name = exc.filename if exc.filename is not None else "output"
        what = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
        print(f"error: {shown(name)}: {what[:1].lower() + what[1:]}", file=sys.stderr)
        raise typer.Exit(2) from None


#: errno values that describe the place the user pointed us at, not a bug
USER_ERRNOS = frozenset(
    getattr(errno, n)
    for n in (
        "EACCES",
        "EPERM",
        "EROFS",
        "ENOSPC",
        "EDQUOT",
        "EFBIG",
        "EEXIST",
        "ENOTDIR",
        "EISDIR",
        "ENAMETOOLONG",
        "ELOOP",
    )
    if hasattr(errno, n)
)


def _users_fault(exc: OSError) -> bool:
    return isinstance(exc, (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)) or (
        exc.errno in USER_ERRNOS
    )


def _given(args: list[str], opts: list[str]) -> str | None:
    """The last value given on the command line ``args`` to an option spelled one of ``opts``."""
    value = None
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                value = args[i + 1]
            elif opt.startswith("--") and arg.startswith(opt + "="):
                value = arg[len(opt) + 1 :]
    return value


def usage_error_line(exc: Exception, args: list[str]) -> str:
    """One line for a usage error click raises: ``--sw-batch '1.5': input should be a valid integer``
    (the option, the value as given, click's reason), ``no such option: --x``; control characters
    shown."""
    param = getattr(exc, "param", None)
    opts = list(getattr(param, "opts", None) or [])
    if not isinstance(exc, typer.BadParameter) or not opts or param.param_type_name != "option":
        text = exc.format_message()
        return shown(text[:1].lower() + text[1:])
    reason = exc.message.removeprefix("Value error, ")
    reason = reason[:1].lower() + reason[1:]
    value = _given(args, opts)
    return shown(f"{opts[0]} {value!r}: {reason}" if value is not None else f"{opts[0]}: {reason}")


#: usage errors that keep click's message with the usage: nothing the user typed is in them
_WITH_USAGE = ("MissingParameter", "NoArgsIsHelpError")


class OneLineErrors(TyperGroup):
    """The commands' group of every hiend CLI (``typer.Typer(cls=OneLineErrors)``): a usage error (an option value that is not a number or not one of the
    choices, an unknown option or command) is one line ``error: --sw-batch '1.5': ...`` and exit 2, as
    every bad input, never the usage box (which would print what was typed raw). A missing argument
    keeps click's message with the usage."""

    @contextlib.contextmanager
    def _one_line(self, args: list[str]) -> Iterator[None]:
        try:
            yield
        except typer.TyperException as exc:  # click's UsageError and its kinds: exit code 2
            if getattr(exc, "exit_code", None) != 2 or type(exc).__name__ in _WITH_USAGE:
                raise
            print(f"error: {usage_error_line(exc, args)}", file=sys.stderr)
            raise typer.Exit(2) from None

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: ANN001, ANN201 (click's)
        with self._one_line(list(args)):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):  # noqa: ANN001, ANN201 (click's signature)
        with self._one_line([*ctx._protected_args, *ctx.args]):
            return super().invoke(ctx)
