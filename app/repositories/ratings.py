"""Named statements over the ``ratings`` table."""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from app.db.models import Rating

# Built once: its cache key is memoised, so each execution skips statement construction.
RATINGS_OF_USER = select(Rating.movie_id, Rating.rating).where(
    Rating.user_id == bindparam("user_id")
)


def for_user(session: Session, user_id: int) -> dict[int, float]:
    """All of a user's ratings as ``{movie_id: rating}``: one query on the primary-key index.

    Runs as a Core statement on the session's connection (no ORM row processing): this is the
    one query of every recommendation request.
    """
    rows = session.connection().execute(RATINGS_OF_USER, {"user_id": user_id}).fetchall()
    return dict(rows)


def page_for_user(
    session: Session, user_id: int, *, limit: int, offset: int
) -> tuple[list[Rating], int]:
    """One page of a user's ratings, newest first, and how many there are."""
    stmt = (
        select(Rating)
        .where(Rating.user_id == user_id)
        .order_by(Rating.rated_at.desc(), Rating.movie_id)
        .limit(limit)
        .offset(offset)
    )
    total = select(func.count()).select_from(Rating).where(Rating.user_id == user_id)
    return list(session.scalars(stmt)), int(session.scalar(total) or 0)


def get(session: Session, user_id: int, movie_id: int) -> Rating | None:
    return session.get(Rating, (user_id, movie_id))


def delete_one(session: Session, user_id: int, movie_id: int) -> int:
    """Delete one rating; returns how many rows went (0 or 1)."""
    stmt = delete(Rating).where(Rating.user_id == user_id, Rating.movie_id == movie_id)
    return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]
