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


#: hiend-train flags of a 32^3 model of four blocks (a step in milliseconds), for the training cases
TINY_TRAIN = [
    "--preset", "tiny", "--set", "model.img_size=32", "--set", "model.depth=4", "--set", "model.embed_dim=48",
    "--set", "model.decoder_embed_dim=24", "--device", "cpu", "-q", "--num-samples", "2", "--batch-size", "1",
]  # fmt: skip


def ok(proc: Any) -> dict:
    """A hiend-train run that succeeded: its JSON result (the last stdout line)."""
    import json

    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def events(out: Path) -> list[dict]:
    """The complete records of ``out/log.jsonl`` (none when it does not exist yet)."""
    import json

    path = out / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]


def tiny_unetr(num_classes: int = 3) -> Any:
    """A tiny UNETR (seeded: the same weights every call) for the predict cases: 32^3 crops, patch 16,
    4 blocks of width 24."""
    import torch

    from hiend_model.mae import build
    from hiend_model.unetr import UNETR

    torch.manual_seed(0)
    mae = build("tiny", img_size=32, patch_size=16, embed_dim=24, depth=4, num_heads=2, decoder_embed_dim=24,
                decoder_num_heads=2)  # fmt: skip
    return UNETR.from_mae(mae, num_classes=num_classes, feature_size=4).eval()


def tiny_plan() -> Any:
    """The plan of :func:`tiny_checkpoint`: 6 mm, 32^3 crops."""
    from hiend_data import Plan

    return Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32))


def tiny_checkpoint(path: Path, num_classes: int = 3, **kwargs: Any) -> Path:
    """:func:`tiny_unetr` saved at ``path`` with :func:`tiny_plan` (``kwargs``: save_checkpoint's)."""
    from hiend_model.checkpoint import save_checkpoint

    return save_checkpoint(path, tiny_unetr(num_classes), plan=tiny_plan(), **kwargs)
