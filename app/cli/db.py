"""`movierec db ...`: schema migrations."""

from __future__ import annotations

import typer

from app.config import get_settings

app = typer.Typer(no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations to the configured database."""
    from app.db import migrate  # Alembic is imported only by the commands that need it

    settings = get_settings()
    settings.ensure_dirs()
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {migrate.current(settings.database_url)}")


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base."),
) -> None:
    """Revert migrations."""
    from app.db import migrate

    settings = get_settings()
    migrate.downgrade(settings.database_url, revision)
    typer.echo(f"database at revision {migrate.current(settings.database_url)}")


@app.command("current")
def current() -> None:
    """Print the current revision."""
    from app.db import migrate

    typer.echo(migrate.current(get_settings().database_url) or "empty")
