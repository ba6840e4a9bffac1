"""Every command's --help shows what its source says: an extra such as ``hiend-model[dicom]`` is not
eaten by rich's markup (it reads ``[dicom]`` as a style tag), in any of the four command lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
EXTRA = re.compile(r"(hiend-(?:data|model|train|eval))\\*\[(\w+)\]")
APPS = {
    "hiend-data": ("hiend_data.cli", "packages/hiend-data/src/hiend_data"),
    "hiend-model": ("hiend_model.cli", "packages/hiend-model/src/hiend_model"),
    "hiend-train": ("hiend_train.cli", "packages/hiend-train/src/hiend_train"),
    "hiend-eval": ("hiend_eval.cli", "packages/hiend-eval/src/hiend_eval"),
}


def _helps(module: str) -> str:
    import importlib

    import typer

    app = importlib.import_module(module).app
    group = typer.main.get_command(app)
    runner = CliRunner()
    out = [runner.invoke(app, ["--help"], env={"COLUMNS": "400"}).output]
    for name in group.commands:  # type: ignore[attr-defined]
        out.append(runner.invoke(app, [name, "--help"], env={"COLUMNS": "400"}).output)
    return re.sub(r"\s+", " ", "\n".join(out))


@pytest.mark.parametrize("cli", sorted(APPS))
def test_extras_named_in_help_are_shown_whole(cli):
    module, src = APPS[cli]
    named = set()
    for f in (ROOT / src).glob("cli*.py"):
        for line in f.read_text().splitlines():
            if not any(w in line for w in ("Error(", "raise ", "print(")):  # messages, not help
                named |= {f"{a}[{b}]" for a, b in EXTRA.findall(line)}
    shown = _helps(module)
    missing = [n for n in sorted(named) if n not in shown]
    assert not missing, f"{cli} --help lost {missing}"


@pytest.mark.parametrize(
    "cli, command, choices",
    [
        ("hiend-model", "predict", ["[nifti|dicom-seg|both]", "[binary|labelmap]"]),
        ("hiend-data", "preprocess", ["[ct|mri]", "[auto|uint8|int16|float16|float32]"]),
    ],
)
def test_options_with_a_fixed_set_of_values_list_them(cli, command, choices):
    import importlib

    from typer.testing import CliRunner

    app = importlib.import_module(APPS[cli][0]).app
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    for c in choices:
        assert c in shown, c
