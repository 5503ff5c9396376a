"""movies: search key and rating count for title search

``search_title`` holds ``app.db.search.search_key(title)`` (lower case, no accents, punctuation
or article), so "the godfather" finds "Godfather, The" with a plain ``=``/``LIKE`` on both
databases; ``rating_count`` is the popularity that orders matches of equal rank. Both are
filled here for the movies already stored.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.search import RATING_COUNTS, search_key

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5_000


def upgrade() -> None:
    with op.batch_alter_table("movies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_title", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("rating_count", sa.Integer(), server_default="0", nullable=False)
        )
    conn = op.get_bind()
    movies = sa.table("movies", sa.column("id", sa.Integer), sa.column("search_title", sa.String))
    update = (
        sa.update(movies)
        .where(movies.c.id == sa.bindparam("movie_id"))
        .values(search_title=sa.bindparam("key"))
    )
    rows = conn.execute(sa.text("SELECT id, title FROM movies ORDER BY id")).fetchall()
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        conn.execute(update, [{"movie_id": i, "key": search_key(t)} for i, t in batch])
    conn.execute(sa.text(RATING_COUNTS))


def downgrade() -> None:
    with op.batch_alter_table("movies", schema=None) as batch_op:
        batch_op.drop_column("rating_count")
        batch_op.drop_column("search_title")
