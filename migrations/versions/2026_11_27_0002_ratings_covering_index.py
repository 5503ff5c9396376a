"""ratings: covering index for a user's ratings

The recommendation route reads ``movie_id, rating`` of one user on every request. Through the
primary key each of the user's rows is fetched from its own table page; an index on
``(user_id, movie_id, rating)`` answers the query from the index alone (an index-only scan on
PostgreSQL, a covering index on SQLite).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ratings_user_movie_rating", ["user_id", "movie_id", "rating"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.drop_index("ix_ratings_user_movie_rating")
