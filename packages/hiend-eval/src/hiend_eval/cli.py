"""Command line of hiend-eval. Heavy imports (torch) happen inside commands so --help is fast."""

from __future__ import annotations

import typer

app = typer.Typer(name="hiend-eval", no_args_is_help=True, add_completion=False,
                  help="Dice, IoU, HD95, ASSD and NSD for label maps, folder scoring and reports.")


@app.callback()
def _root() -> None:
    """Dice, IoU, HD95, ASSD and NSD for label maps, folder scoring and reports."""


def main() -> None:
    app()
