"""A summary of the store, computed in SQL (no rating is loaded into Python)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.orm import InstrumentedAttribute

from app.db.models import Movie, Rating, User
from app.db.session import make_engine


@dataclass(frozen=True)
class Distribution:
    """Min / median / mean / max of a count per entity (only entities with ratings)."""

    min: int
    median: float
    mean: float
    max: int


@dataclass(frozen=True)
class StoreStats:
    movies: int
    users: int
    ratings: int
    density: float  # ratings / (users x movies)
    histogram: dict[float, int]  # rating value -> number of ratings
    per_user: Distribution | None
    per_movie: Distribution | None
    newest_rating: datetime | None

    def lines(self) -> list[str]:
        """The statistics as printable lines."""
        out = [
            f"movies:  {self.movies:,}",
            f"users:   {self.users:,}",
            f"ratings: {self.ratings:,}",
            f"density: {self.density:.4%}",
            f"newest rating: {self.newest_rating.isoformat() if self.newest_rating else '-'}",
        ]
        for name, dist in (("per user", self.per_user), ("per movie", self.per_movie)):
            if dist is not None:
                out.append(
                    f"ratings {name}: min {dist.min:,}, median {dist.median:,.1f}, "
                    f"mean {dist.mean:,.1f}, max {dist.max:,}"
                )
        if self.histogram:
            out.append("rating histogram:")
            peak = max(self.histogram.values())
            for value, count in self.histogram.items():
                bar = "#" * max(1, round(40 * count / peak))
                out.append(f"  {value:>3g} {count:>12,} {bar}")
        return out


def _counts_per(column: InstrumentedAttribute[int]) -> Select[Any]:
    return select(func.count().label("n")).select_from(Rating).group_by(column)


def _distribution(conn: Connection, column: InstrumentedAttribute[int]) -> Distribution | None:
    """Distribution of ratings per value of ``column``; the median via ORDER BY/OFFSET, which
    both SQLite and PostgreSQL run."""
    per = _counts_per(column).subquery()
    groups, low, mean, high = conn.execute(
        select(func.count(), func.min(per.c.n), func.avg(per.c.n), func.max(per.c.n))
    ).one()
    if not groups:
        return None
    middle = select(per.c.n).order_by(per.c.n).offset((groups - 1) // 2).limit(2 - groups % 2)
    values = conn.execute(middle).scalars().all()
    return Distribution(int(low), sum(values) / len(values), float(mean), int(high))


def store_stats(database_url: str) -> StoreStats:
    """Counts, density, rating histogram, per-user and per-movie activity, newest rating."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            movies = conn.execute(select(func.count()).select_from(Movie)).scalar_one()
            users = conn.execute(select(func.count()).select_from(User)).scalar_one()
            ratings, newest = conn.execute(select(func.count(), func.max(Rating.rated_at))).one()
            histogram = {
                float(value): int(count)
                for value, count in conn.execute(
                    select(Rating.rating, func.count())
                    .group_by(Rating.rating)
                    .order_by(Rating.rating)
                )
            }
            per_user = _distribution(conn, Rating.user_id)
            per_movie = _distribution(conn, Rating.movie_id)
    finally:
        engine.dispose()
    cells = users * movies
    return StoreStats(
        movies=movies,
        users=users,
        ratings=ratings,
        density=ratings / cells if cells else 0.0,
        histogram=histogram,
        per_user=per_user,
        per_movie=per_movie,
        newest_rating=newest,
    )
