"""Command line of hiend-model. Heavy imports (torch) happen inside commands so --help is fast."""

from __future__ import annotations

import typer

app = typer.Typer(name="hiend-model", no_args_is_help=True, add_completion=False,
                  help="3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation.")


@app.callback()
def _root() -> None:
    """3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation."""


def main() -> None:
    app()
