"""Command line of hiend-data. Heavy imports happen inside commands so ``--help`` is fast."""

from __future__ import annotations

import typer

from .cli_sampling import register as _register_sampling

app = typer.Typer(name="hiend-data", no_args_is_help=True, add_completion=False,
                  help="CT/MRI volume I/O, preprocessing, cache and patch sampling.")


@app.callback()
def _root() -> None:
    """CT/MRI volume I/O, preprocessing, cache and patch sampling."""


_register_sampling(app)


def main() -> None:
    app()
