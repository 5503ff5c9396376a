"""Named statements over the ``movies`` table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.db.models import CatalogueVersion, Movie


def _search_filter(stmt: Select, q: str | None, genre: str | None) -> Select:
    """Case-insensitive title search and a genre filter on a movies select."""
    if q:
        stmt = stmt.where(func.lower(Movie.title).contains(q.lower(), autoescape=True))
    if genre:
        # Genres are stored "A|B|C"; wrapping both sides in "|" makes the match exact.
        stmt = stmt.where(
            ("|" + func.lower(Movie.genres) + "|").contains(f"|{genre.lower()}|", autoescape=True)
        )
    return stmt


def search(
    session: Session, *, q: str | None, genre: str | None, limit: int, offset: int
) -> tuple[list[Movie], int]:
    """One page of movies matching the search, ordered by id, and the total number of matches."""
    page = _search_filter(select(Movie), q, genre).order_by(Movie.id).limit(limit).offset(offset)
    total = _search_filter(select(func.count()).select_from(Movie), q, genre)
    return list(session.scalars(page)), int(session.scalar(total) or 0)


def get(session: Session, movie_id: int) -> Movie | None:
    return session.get(Movie, movie_id)


def existing_ids(session: Session, movie_ids: Sequence[int]) -> set[int]:
    """The subset of ``movie_ids`` present in the catalogue."""
    if not movie_ids:
        return set()
    return set(session.scalars(select(Movie.id).where(Movie.id.in_(list(movie_ids)))))


def all_rows(session: Session) -> list[tuple[int, str, int | None, str]]:
    """Every movie as ``(id, title, year, genres)``, ordered by id (catalogue loading)."""
    stmt = select(Movie.id, Movie.title, Movie.year, Movie.genres).order_by(Movie.id)
    return [(r[0], r[1], r[2], r[3]) for r in session.execute(stmt)]


def signature(session: Session) -> int:
    """The catalogue's version: one row to poll, which the database bumps on every change to
    ``movies`` (an added, retitled, re-genred or deleted movie; migration 0004)."""
    version = session.scalar(select(CatalogueVersion.version).where(CatalogueVersion.id == 1))
    return int(version or 0)
