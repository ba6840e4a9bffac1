"""`hiend-data phantom` and `hiend-data bench` (owned by the sampling side). Placeholder until they land."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the sampling-side commands to the ``hiend-data`` app."""
