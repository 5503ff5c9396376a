"""Catalogue use cases: search, one movie."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import Movie
from app.repositories import movies as movies_repo
from app.services.errors import NotFoundError


def search_movies(
    session: Session, *, q: str | None, genre: str | None, limit: int, offset: int
) -> tuple[list[Movie], int]:
    """A page of movies whose title matches ``q`` (case, accents, punctuation and a leading or
    trailing article ignored; best matches first, then the most rated) and that have
    ``genre``."""
    return movies_repo.search(session, q=q or None, genre=genre or None, limit=limit, offset=offset)


def get_movie(session: Session, movie_id: int) -> Movie:
    movie = movies_repo.get(session, movie_id)
    if movie is None:
        raise NotFoundError(f"movie {movie_id} does not exist", movie_id=movie_id)
    return movie
