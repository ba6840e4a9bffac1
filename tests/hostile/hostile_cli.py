"""What every hostile test does with a command: run it as a user would (the installed console script,
in a subprocess) and check a refusal (exit code 2, exactly one line on stderr, no traceback, naming what
the test expects). Imported by the tests of this folder (``conftest.py`` puts the folder on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the folder of the console scripts of this environment (hiend-data, hiend-model, ...)
BIN = Path(sys.executable).parent


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``run("hiend-data", "inspect", path)``: the command's result, output captured as text, 300 s at
    most; ``env`` is added to the environment."""
    return subprocess.run(
        [str(BIN / str(args[0])), *map(str, args[1:])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def one_line_exit_2(proc: Any, *fragments: str) -> str:
    """Assert a refusal: exit code 2 (a subprocess result or a CliRunner result), one stderr line
    holding every fragment, no traceback. Returns the line."""
    code = proc.returncode if hasattr(proc, "returncode") else proc.exit_code
    stdout = getattr(proc, "stdout", "") or ""
    assert code == 2, (code, stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]
