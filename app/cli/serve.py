"""`movierec serve|worker`."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Attach the serving commands to the top-level command."""
