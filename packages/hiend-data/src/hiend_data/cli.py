"""Command line of hiend-data. Heavy imports (torch) happen inside commands so --help is fast."""

from __future__ import annotations

import typer

app = typer.Typer(name="hiend-data", no_args_is_help=True, add_completion=False,
                  help="CT/MRI volume I/O, geometry, preprocessing, cache and patch sampling for Hi-End-MAE (torch-free core).")


@app.callback()
def _root() -> None:
    """CT/MRI volume I/O, geometry, preprocessing, cache and patch sampling for Hi-End-MAE (torch-free core)."""


def main() -> None:
    app()
