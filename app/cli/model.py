"""`movierec train|evaluate|recommend|predict`."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Attach the model commands to the top-level command."""
