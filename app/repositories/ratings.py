"""Named statements over the ``ratings`` table, and the serving path's raw reader."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, delete, event, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection

from app.db.models import Movie, Rating
from app.repositories.statements import insert_unless_present

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
) -> tuple[list[tuple[Rating, Movie]], int]:
    """One page of a user's ratings with their movies, newest first, and how many there are."""
    stmt = (
        select(Rating, Movie)
        .join(Movie, Movie.id == Rating.movie_id)
        .where(Rating.user_id == user_id)
        .order_by(Rating.rated_at.desc(), Rating.movie_id)
        .limit(limit)
        .offset(offset)
    )
    total = select(func.count()).select_from(Rating).where(Rating.user_id == user_id)
    page = [(rating, movie) for rating, movie in session.execute(stmt)]
    return page, int(session.scalar(total) or 0)


def get(session: Session, user_id: int, movie_id: int) -> Rating | None:
    return session.get(Rating, (user_id, movie_id))


def upsert(
    session: Session, user_id: int, movie_id: int, value: float, at: datetime
) -> tuple[Rating, bool]:
    """Create or replace one rating without a read-then-write race: ``INSERT … ON CONFLICT DO
    NOTHING``, then ``UPDATE`` when the row was there. ``(rating, created)``."""
    for _ in range(2):  # a row deleted between the two statements: insert again
        values = {"user_id": user_id, "movie_id": movie_id, "rating": value, "rated_at": at}
        created = insert_unless_present(session, Rating, values, ["user_id", "movie_id"])
        if created:
            break
        stmt = (
            update(Rating)
            .where(Rating.user_id == user_id, Rating.movie_id == movie_id)
            .values(rating=value, rated_at=at)
        )
        if int(session.execute(stmt).rowcount or 0):  # type: ignore[attr-defined]
            break
    rating = session.get(Rating, (user_id, movie_id), populate_existing=True)
    if rating is None:  # pragma: no cover - deleted again by a concurrent request
        raise RuntimeError(f"rating ({user_id}, {movie_id}) vanished while being written")
    return rating, created


def delete_one(session: Session, user_id: int, movie_id: int) -> int:
    """Delete one rating; returns how many rows went (0 or 1)."""
    stmt = delete(Rating).where(Rating.user_id == user_id, Rating.movie_id == movie_id)
    return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]


SQLITE_MMAP_BYTES = 256 << 20  # a user's scattered rating rows are read without read() calls


class RatingsReader:
    """A user's ratings for the recommendation hot path, straight from the DBAPI driver.

    Each thread keeps one connection of its own (in the API the event loop's thread for SQLite,
    the reader's own thread for PostgreSQL), so a request costs one prepared query and nothing
    else: no session, no pool
    checkout, no transaction, no SQLAlchemy result processing. SQLite connections read through
    a memory map (WAL mode: a reader sees every committed rating); PostgreSQL connections run in
    autocommit with the statement prepared server-side by psycopg. A connection that fails is
    dropped and the query retried once on a fresh one; disposing of the engine closes them all.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="movierec-ratings")
        self._open: list[PoolProxiedConnection] = []
        self._sqlite = engine.dialect.name == "sqlite"
        self.inline = self._sqlite  # query on the caller's thread (see rows_for_user_async)
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._ratings_sql = f"SELECT movie_id, rating FROM ratings WHERE user_id = {marker}"
        self._user_sql = f"SELECT 1 FROM users WHERE id = {marker}"
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def _connection(self) -> Any:
        """This thread's driver connection, taken out of the engine's pool on first use."""
        conn: Any = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        proxied = self.engine.raw_connection()
        conn = proxied.driver_connection
        if conn is None:
            raise RuntimeError("the pool returned a connection without a driver connection")
        if self._sqlite:
            conn.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        else:
            proxied.rollback()  # end any transaction the pool's pre-ping opened
            conn.autocommit = True
        with self._lock:
            self._open.append(proxied)
        self._local.proxied, self._local.conn = proxied, conn
        return conn

    def _rows(self, sql: str, user_id: int) -> list[Any]:
        """Rows of one single-parameter query; one retry on a fresh connection."""
        driver_error = self.engine.dialect.loaded_dbapi.Error
        for attempt in range(2):
            try:
                conn = self._connection()
                if self._sqlite:
                    return list(conn.execute(sql, (user_id,)).fetchall())
                return list(conn.execute(sql, (user_id,), prepare=True).fetchall())
            except Exception as exc:
                self._drop_own()
                if not attempt:
                    continue
                if isinstance(exc, driver_error):  # as SQLAlchemy raises it: the API's 503
                    raise DBAPIError.instance(sql, (user_id,), exc, driver_error) from exc
                raise
        raise AssertionError("unreachable")

    def for_user(self, user_id: int) -> dict[int, float]:
        """All of a user's ratings as ``{movie_id: rating}`` (empty for an unknown user)."""
        return dict(self._rows(self._ratings_sql, user_id))

    def rows_for_user(self, user_id: int) -> list[tuple[int, float]]:
        """A user's ratings as ``(movie_id, rating)`` rows, in the index's order."""
        return self._rows(self._ratings_sql, user_id)

    async def rows_for_user_async(self, user_id: int) -> list[tuple[int, float]]:
        """``rows_for_user`` from the event loop.

        SQLite (``inline``): on the loop's own thread. The query reads a few index pages
        through the memory map (tens of microseconds with the covering index), less than the
        hop to another thread and back costs. PostgreSQL: on the reader's own thread, since a
        network round trip would stall the loop; the driver releases the GIL meanwhile.
        """
        if self.inline:
            return self._rows(self._ratings_sql, user_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.rows_for_user, user_id)

    async def for_user_async(self, user_id: int) -> dict[int, float]:
        """``for_user`` from the event loop (see ``rows_for_user_async``)."""
        return dict(await self.rows_for_user_async(user_id))

    def user_exists(self, user_id: int) -> bool:
        return bool(self._rows(self._user_sql, user_id))

    def _drop_own(self) -> None:
        """Invalidate this thread's connection after an error; the next call opens another."""
        proxied = getattr(self._local, "proxied", None)
        self._local.proxied = self._local.conn = None
        if proxied is None:
            return
        with self._lock:
            if proxied in self._open:
                self._open.remove(proxied)
        with contextlib.suppress(Exception):  # a dead connection has nothing left to release
            proxied.invalidate()

    def close(self) -> None:
        """Close every thread's connection (the engine is being disposed of)."""
        with self._lock:
            open_, self._open = self._open, []
        for proxied in open_:
            with contextlib.suppress(Exception):
                proxied.invalidate()
        self._local = threading.local()
