#!/usr/bin/env python3
"""Set up the development environment and run the demo or the tests.

    python3 tools/dev.py demo        # synthetic CT -> the whole pipeline (grows with the project)
    python3 tools/dev.py test        # the whole test suite (what CI runs)
    python3 tools/dev.py lint        # ruff check + ruff format --check over the repository (CI runs it too)
    python3 tools/dev.py env         # only (re)build .venv

Needs only Python >= 3.10 with pip and venv. Creates ``.venv`` at the repository root with the CPU
build of torch pinned in ``tools/constraints-dev.txt`` (development and CI only: the packages
themselves accept any torch >= 2.2), editable installs of every package under ``packages/`` and the
test dependencies. The environment is rebuilt when any pyproject or requirements file changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".hiend-stamp"
CONSTRAINTS = ROOT / "tools" / "constraints-dev.txt"
REQS = ROOT / "tools" / "requirements-dev.txt"
# Installed in this order so that each package's dependency on the ones before resolves locally.
PACKAGES = ["hiend-data[torch]", "hiend-model", "hiend-train", "hiend-eval"]


def _fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted([CONSTRAINTS, REQS, *ROOT.glob("packages/*/pyproject.toml")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _pip(*args: str) -> None:
    cmd = [
        str(PY),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "-c",
        str(CONSTRAINTS),
        *args,
    ]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_env() -> None:
    want = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    STAMP.unlink(missing_ok=True)
    _pip("torch==2.13.0")  # the CPU build on disk; never a CUDA build for development
    editable: list[str] = []
    for spec in PACKAGES:
        name, _, extra = spec.partition("[")
        editable += ["-e", f"packages/{name}" + (f"[{extra}" if extra else "")]
    _pip(*editable, "-r", str(REQS))
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lint", "env"}:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_env()
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cmd, rest = argv[0], argv[1:]
    if cmd == "env":
        return 0
    if cmd == "lint":  # ruff is pinned in tools/requirements-dev.txt; its settings are the root pyproject's
        ruff = [str(PY), "-m", "ruff"]
        check = subprocess.run([*ruff, "check", *(rest or ["."])], env=env, cwd=ROOT).returncode
        fmt = subprocess.run([*ruff, "format", "--check", *(rest or ["."])], env=env, cwd=ROOT).returncode
        return check or fmt
    if cmd == "demo":
        return subprocess.run([str(PY), str(ROOT / "tools" / "demo.py"), *rest], env=env, cwd=ROOT).returncode
    return subprocess.run([str(PY), "-m", "pytest", *rest], env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
