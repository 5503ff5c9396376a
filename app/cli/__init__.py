"""The `movierec` command line."""

from __future__ import annotations

import typer

from app.cli import data as data_cli
from app.cli import db as db_cli
from app.cli import model as model_cli
from app.cli import serve as serve_cli

cli = typer.Typer(
    name="movierec",
    help="A movie recommendation service built on a stacked autoencoder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.add_typer(db_cli.app, name="db", help="Database schema (Alembic migrations).")
cli.add_typer(data_cli.app, name="data", help="Fetch, import, synthesise and inspect data.")
model_cli.register(cli)
serve_cli.register(cli)


def main() -> None:
    cli()
