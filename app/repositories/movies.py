"""Named statements over the ``movies`` table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, case, func, select, update
from sqlalchemy.orm import Session

from app.db.models import CatalogueVersion, Movie
from app.db.search import search_key


def _search_filter(stmt: Select, key: str, q: str | None, genre: str | None) -> Select:
    """Title search (on the search key, see ``app.db.search``) and a genre filter.

    A query with no word in it (only punctuation, say) is looked for as typed, in any case.
    """
    if key:
        stmt = stmt.where(Movie.search_title.contains(key, autoescape=True))
    elif q:
        stmt = stmt.where(func.lower(Movie.title).contains(q.lower(), autoescape=True))
    if genre:
        # Genres are stored "A|B|C"; wrapping both sides in "|" makes the match exact.
        stmt = stmt.where(
            ("|" + func.lower(Movie.genres) + "|").contains(f"|{genre.lower()}|", autoescape=True)
        )
    return stmt


def _match_rank(key: str) -> ColumnElement[int]:
    """0 for a title equal to the query, 1 for one that starts with it, 2 for the rest."""
    return case(
        (Movie.search_title == key, 0),
        (Movie.search_title.startswith(key, autoescape=True), 1),
        else_=2,
    )


def search(
    session: Session, *, q: str | None, genre: str | None, limit: int, offset: int
) -> tuple[list[Movie], int]:
    """One page of movies matching the search, and the total number of matches.

    With a query: exact matches first, then titles starting with it, then titles containing
    it, each group by popularity (``rating_count``), then id. Without one: by id.
    """
    key = search_key(q) if q else ""
    order = (_match_rank(key), Movie.rating_count.desc(), Movie.id) if key else (Movie.id,)
    page = _search_filter(select(Movie), key, q, genre).order_by(*order).limit(limit).offset(offset)
    total = _search_filter(select(func.count()).select_from(Movie), key, q, genre)
    return list(session.scalars(page)), int(session.scalar(total) or 0)


def count_rating(session: Session, movie_id: int, delta: int) -> None:
    """Add ``delta`` (a rating created: 1, deleted: -1) to the movie's ``rating_count``."""
    session.execute(
        update(Movie)
        .where(Movie.id == movie_id)
        .values(rating_count=Movie.rating_count + delta)
        .execution_options(synchronize_session=False)
    )


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
