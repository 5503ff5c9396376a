"""Rating use cases: list, set and delete a user's ratings.

The next recommendation for the user reads the ratings again (one indexed query), so a write
here changes that answer at once, with no retraining.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import rating_scale
from app.db.models import Movie, Rating, utcnow
from app.repositories import movies as movies_repo
from app.repositories import ratings as ratings_repo
from app.repositories import users as users_repo
from app.services.errors import InvalidInputError, NotFoundError


def check_rating(value: float, field: str = "rating") -> float:
    """A rating that keeps the rule (``app.rating_scale``), or an error naming the field."""
    if not rating_scale.is_valid_rating(value):
        raise InvalidInputError(f"{field} must be {rating_scale.RULE}, got {value}", field=field)
    return float(value)


def list_ratings(
    session: Session, user_id: int, *, limit: int, offset: int
) -> tuple[list[tuple[Rating, Movie]], int]:
    """One page of a user's ratings with their movies, newest first, and the user's total."""
    if not users_repo.exists(session, user_id):
        raise NotFoundError(f"user {user_id} does not exist", user_id=user_id)
    return ratings_repo.page_for_user(session, user_id, limit=limit, offset=offset)


def set_rating(
    session: Session, user_id: int, movie_id: int, value: float
) -> tuple[Rating, Movie, bool]:
    """Create or replace one rating (creating the user if new); ``(rating, movie, created)``."""
    check_rating(value)
    movie = movies_repo.get(session, movie_id)
    if movie is None:
        raise NotFoundError(f"movie {movie_id} does not exist", movie_id=movie_id)
    users_repo.ensure(session, user_id)
    rating, created = ratings_repo.upsert(session, user_id, movie_id, value, utcnow())
    if created:
        movies_repo.count_rating(session, movie_id, 1)
    return rating, movie, created


def delete_rating(session: Session, user_id: int, movie_id: int) -> None:
    if ratings_repo.delete_one(session, user_id, movie_id) == 0:
        raise NotFoundError(
            f"user {user_id} has no rating for movie {movie_id}",
            user_id=user_id,
            movie_id=movie_id,
        )
    movies_repo.count_rating(session, movie_id, -1)
