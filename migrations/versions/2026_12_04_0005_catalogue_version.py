"""catalogue_version: one row the database bumps on every change to ``movies``

Each API process holds the catalogue (titles, years, genres) in memory and reloads it when this
version moves. Triggers bump it for every write whatever its source (an import through
``COPY`` or an upsert, a manual edit): PostgreSQL once per statement, SQLite once per row. An
update bumps it only when it sets a column of the catalogue (``CATALOGUE_COLUMNS``): the count
of ratings that every rating write keeps beside a movie is not the catalogue, and must not make
every API process reload it after each rating.
Before, the reload compared the movies' count and largest id, which missed new titles and
genres of existing movies.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 03:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An upsert, so that the version survives its row being deleted (e.g. a table emptied).
BUMP = (
    "INSERT INTO catalogue_version (id, version) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET version = catalogue_version.version + 1"
)


# The columns an API process's catalogue is made of; updating any other column bumps nothing.
CATALOGUE_COLUMNS = "id, title, year, genres"


def upgrade() -> None:
    op.create_table(
        "catalogue_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_version")),
    )
    op.execute("INSERT INTO catalogue_version (id, version) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION movierec_bump_catalogue_version() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER movies_bump_catalogue_version "
            f"AFTER INSERT OR UPDATE OF {CATALOGUE_COLUMNS} OR DELETE OR TRUNCATE ON movies "
            "FOR EACH STATEMENT EXECUTE FUNCTION movierec_bump_catalogue_version()"
        )
    else:
        for event, what in (
            ("insert", "INSERT"),
            ("update", f"UPDATE OF {CATALOGUE_COLUMNS}"),
            ("delete", "DELETE"),
        ):
            op.execute(
                f"CREATE TRIGGER movies_bump_catalogue_version_{event} "
                f"AFTER {what} ON movies FOR EACH ROW BEGIN {BUMP}; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER movies_bump_catalogue_version ON movies")
        op.execute("DROP FUNCTION movierec_bump_catalogue_version()")
    else:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER movies_bump_catalogue_version_{event}")
    op.drop_table("catalogue_version")
