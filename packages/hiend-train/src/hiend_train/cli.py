"""Command line of hiend-train. Heavy imports (torch) happen inside commands so --help is fast."""

from __future__ import annotations

import typer

app = typer.Typer(name="hiend-train", no_args_is_help=True, add_completion=False,
                  help="Hi-End-MAE pre-training and UNETR fine-tuning loops (DDP via torchrun).")


@app.callback()
def _root() -> None:
    """Hi-End-MAE pre-training and UNETR fine-tuning loops (DDP via torchrun)."""


def main() -> None:
    app()
