"""Writers of validated movies and ratings into the store, all in one transaction.

PostgreSQL: ratings are streamed with ``COPY ... FROM STDIN (FORMAT BINARY)`` (rows built by
numpy, no Python object per rating) into a temporary staging table and merged at the end with
one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``; a large first load streams every chunk
through one ``COPY`` straight into ``ratings`` with its keys rebuilt once at the end. SQLite:
large ``executemany`` batches of upserts. Either way the whole import is one transaction: an
error anywhere rolls it back and leaves the store exactly as it was.

Merge rules, the same on both backends: a rating replaces the stored one for the same user and
movie when it is newer (``rated_at``), or equally new with a different value; within one input
the newest wins, and among equally new ones the last line. A user's ``created_at`` is their
earliest known rating time. Each movie's ``search_title`` is written with its title and its
``rating_count`` recounted at the end (``app.db.search``).
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from app.db.search import RATING_COUNTS, search_key
from app.db.session import make_engine

PG_EPOCH_OFFSET = 946_684_800  # seconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch
_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_PG_TRAILER = b"\xff\xff"
# Binary COPY field types: numpy big-endian layout of each PostgreSQL type.
_PG_BINARY = {"int4": ">i4", "int8": ">i8", "float8": ">f8", "timestamptz": ">i8"}


@dataclass(frozen=True)
class WriteResult:
    """What an import changed in the store."""

    movies_added: int
    movies_updated: int
    users_added: int
    ratings_added: int
    ratings_updated: int
    # Seconds spent in each phase of the write, where the writer measures them (the benchmark
    # prints them); not part of what changed.
    phases: dict[str, float] = field(default_factory=dict, compare=False)


class StoreWriter(ABC):
    """Receives movies then rating chunks inside one open transaction; ``finish`` merges."""

    @abstractmethod
    def movie_ids(self) -> np.ndarray:
        """Ids of the movies already in the store."""

    @abstractmethod
    def write_movies(self, movies: pd.DataFrame) -> None:
        """Upsert movies (columns movie_id, title, year, genres)."""

    @abstractmethod
    def write_ratings(self, chunk: pd.DataFrame) -> None:
        """Add a chunk of ratings (user_id, movie_id, rating, timestamp, line)."""

    @abstractmethod
    def finish(self) -> WriteResult:
        """Complete the merge and count what changed (the caller commits). May raise
        :class:`RestartStaged` once: then the same chunks must be written again."""

    def abort(self, error: BaseException) -> None:  # noqa: B027 - optional hook
        """Release what an unfinished import holds open before the rollback (nothing by
        default)."""


def _movie_rows(movies: pd.DataFrame) -> list[tuple[Any, ...]]:
    """``(id, title, search_title, year, genres)`` rows of the movies' table."""
    years = [None if pd.isna(y) else int(y) for y in movies["year"]]
    titles = movies["title"].tolist()
    return list(
        zip(
            movies["movie_id"].tolist(),
            titles,
            [search_key(t) for t in titles],
            years,
            movies["genres"].tolist(),
            strict=True,
        )
    )


def _refresh_rating_counts(cursor: Any) -> None:
    """Recount ``movies.rating_count`` (search's popularity) after the ratings changed."""
    cursor.execute(RATING_COUNTS)


# --------------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------------

SQLITE_CACHE_KIB = 256 * 1024  # page cache of the import connection
_SQLITE_MOVIES = """
INSERT INTO movies (id, title, search_title, year, genres) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET title = excluded.title, search_title = excluded.search_title,
    year = excluded.year, genres = excluded.genres
WHERE movies.title IS NOT excluded.title OR movies.year IS NOT excluded.year
   OR movies.genres IS NOT excluded.genres
"""
_SQLITE_USERS = """
INSERT INTO users (id, created_at) VALUES (?, datetime(?, 'unixepoch'))
ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at
WHERE excluded.created_at < users.created_at
"""
_SQLITE_RATINGS = """
INSERT INTO ratings (user_id, movie_id, rating, rated_at) VALUES (?, ?, ?, datetime(?, 'unixepoch'))
ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = excluded.rating, rated_at = excluded.rated_at
WHERE excluded.rated_at > ratings.rated_at
   OR (excluded.rated_at = ratings.rated_at AND excluded.rating <> ratings.rating)
"""


def _count(cursor: Any, table: str) -> int:
    cursor.execute(f"SELECT count(*) FROM {table}")
    return int(cursor.fetchone()[0])


class SqliteWriter(StoreWriter):
    """Upserts in large ``executemany`` batches; SQLite converts Unix times to
    ``YYYY-MM-DD HH:MM:SS`` (UTC), the form SQLAlchemy reads back."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        # The default 2 MiB page cache thrashes once the ratings B-trees outgrow it.
        self.cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        # A first load checks foreign keys once at the end instead of twice per row. The pragma
        # can only change outside a transaction; it affects this import's own connection,
        # which is closed afterwards.
        self.cursor.execute("SELECT EXISTS (SELECT 1 FROM ratings)")
        self.first_load = not self.cursor.fetchone()[0]
        if self.first_load:
            self.cursor.execute("PRAGMA foreign_keys = OFF")
        self.cursor.execute("BEGIN")
        self.before = {t: _count(self.cursor, t) for t in ("movies", "users", "ratings")}
        self.movies_changed = 0
        self.ratings_changed = 0
        self.dropped_indexes: list[str] | None = None

    def _drop_indexes_of_empty_ratings(self) -> None:
        """On a first load, drop the secondary indexes of ratings (their definitions kept) so
        they are built once at the end instead of updated at random for every row."""
        self.dropped_indexes = []
        if not self.first_load:
            return
        self.cursor.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ratings' "
            "AND sql IS NOT NULL ORDER BY name"
        )
        for name, definition in self.cursor.fetchall():
            self.cursor.execute(f'DROP INDEX "{name}"')
            self.dropped_indexes.append(definition)

    def movie_ids(self) -> np.ndarray:
        self.cursor.execute("SELECT id FROM movies")
        return np.array([row[0] for row in self.cursor.fetchall()], dtype=np.int64)

    def write_movies(self, movies: pd.DataFrame) -> None:
        self.cursor.executemany(_SQLITE_MOVIES, _movie_rows(movies))
        # The rows this statement changed (total_changes would also count what the catalogue
        # version's triggers write).
        self.movies_changed += max(self.cursor.rowcount, 0)

    def write_ratings(self, chunk: pd.DataFrame) -> None:
        if self.dropped_indexes is None:
            self._drop_indexes_of_empty_ratings()
        first = chunk.groupby("user_id", sort=False)["timestamp"].min()
        self.cursor.executemany(
            _SQLITE_USERS, zip(first.index.tolist(), first.tolist(), strict=True)
        )
        start = self.conn.total_changes
        self.cursor.executemany(
            _SQLITE_RATINGS,
            zip(
                chunk["user_id"].tolist(),
                chunk["movie_id"].tolist(),
                chunk["rating"].tolist(),
                chunk["timestamp"].tolist(),
                strict=True,
            ),
        )
        self.ratings_changed += self.conn.total_changes - start

    def finish(self) -> WriteResult:
        for definition in self.dropped_indexes or []:
            self.cursor.execute(definition)
        if self.first_load:
            self.cursor.execute("PRAGMA foreign_key_check(ratings)")
            broken = self.cursor.fetchone()
            if broken is not None:
                raise sqlite3.IntegrityError(
                    f"a rating refers to a missing row of {broken[2]} (ratings rowid {broken[1]})"
                )
        _refresh_rating_counts(self.cursor)
        after = {t: _count(self.cursor, t) for t in ("movies", "users", "ratings")}
        return _result(self.before, after, self.movies_changed, self.ratings_changed)


def _result(
    before: dict[str, int], after: dict[str, int], movies_changed: int, ratings_changed: int
) -> WriteResult:
    """Split changed rows into added (the growth of the table) and updated (the rest)."""
    movies_added = after["movies"] - before["movies"]
    ratings_added = after["ratings"] - before["ratings"]
    return WriteResult(
        movies_added=movies_added,
        movies_updated=movies_changed - movies_added,
        users_added=after["users"] - before["users"],
        ratings_added=ratings_added,
        ratings_updated=ratings_changed - ratings_added,
    )


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------

_PG_STAGE = """
CREATE TEMP TABLE movierec_stage_ratings (
    user_id integer, movie_id integer, rating double precision, rated_at timestamptz, line bigint
) ON COMMIT DROP
"""
_PG_STAGE_MOVIES = """
CREATE TEMP TABLE movierec_stage_movies (
    id integer, title text, search_title text, year integer, genres text
) ON COMMIT DROP
"""
_PG_MOVIES = """
INSERT INTO movies (id, title, search_title, year, genres)
SELECT id, title, search_title, year, genres FROM movierec_stage_movies
ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, search_title = EXCLUDED.search_title,
    year = EXCLUDED.year, genres = EXCLUDED.genres
WHERE (movies.title, movies.year, movies.genres)
    IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.year, EXCLUDED.genres)
"""
_PG_USERS = """
INSERT INTO users (id, created_at)
SELECT user_id, min(rated_at) FROM movierec_stage_ratings GROUP BY user_id
ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at
WHERE EXCLUDED.created_at < users.created_at
"""
# DISTINCT ON keeps one row per pair: the newest, and among equally new the last line.
_PG_RATINGS = """
INSERT INTO ratings (user_id, movie_id, rating, rated_at)
SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, rating, rated_at
FROM movierec_stage_ratings
ORDER BY user_id, movie_id, rated_at DESC, line DESC
ON CONFLICT (user_id, movie_id) DO UPDATE SET rating = EXCLUDED.rating,
    rated_at = EXCLUDED.rated_at
WHERE EXCLUDED.rated_at > ratings.rated_at
   OR (EXCLUDED.rated_at = ratings.rated_at AND EXCLUDED.rating <> ratings.rating)
"""


# An import into an empty ratings table of at least this many rows rebuilds the table's keys
# and indexes once at the end instead of maintaining them row by row.
BULK_MIN_ROWS = 50_000
_PG_RATINGS_BULK = """
INSERT INTO ratings (user_id, movie_id, rating, rated_at)
SELECT DISTINCT ON (user_id, movie_id) user_id, movie_id, rating, rated_at
FROM movierec_stage_ratings
ORDER BY user_id, movie_id, rated_at DESC, line DESC
"""
# The primary key first, then foreign keys ('p' sorts after 'f').
_PG_RATINGS_CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'ratings'::regclass AND contype IN ('p', 'f')
ORDER BY contype DESC, conname
"""
# Indexes of ratings that no constraint owns (the movie_id index).
_PG_RATINGS_INDEXES = """
SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = 'ratings'::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                  AND c.conrelid = 'ratings'::regclass)
ORDER BY i.relname
"""


def _drop_ratings_keys(cursor: Any) -> Callable[..., None]:
    """Drop the key, foreign keys and indexes of ``ratings``; the returned function recreates
    them from their own catalogue definitions (so they come back exactly as the migrations
    made them), the primary key first.

    Building a B-tree once over the loaded rows and validating a foreign key with one join are
    several times faster than maintaining them row by row. It all happens inside the import
    transaction: a failure restores them untouched.
    """
    constraints = cursor.execute(_PG_RATINGS_CONSTRAINTS).fetchall()
    indexes = cursor.execute(_PG_RATINGS_INDEXES).fetchall()
    for name, _ in indexes:
        cursor.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    for name, _ in reversed(constraints):
        cursor.execute(
            sql.SQL("ALTER TABLE ratings DROP CONSTRAINT {}").format(sql.Identifier(name))
        )

    def rebuild(phases: dict[str, float] | None = None) -> None:
        """Recreate everything dropped; ``phases`` receives the seconds each one took."""
        steps: list[tuple[str, sql.Composable]] = [
            (name, _add_constraint(name, definition)) for name, definition in constraints[:1]
        ]
        steps += [(name, sql.SQL(definition)) for name, definition in indexes]
        steps += [(name, _add_constraint(name, definition)) for name, definition in constraints[1:]]
        for name, statement in steps:
            started = time.perf_counter()
            cursor.execute(statement)
            if phases is not None:
                phases[name] = time.perf_counter() - started

    return rebuild


def _add_constraint(name: str, definition: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE ratings ADD CONSTRAINT {} ").format(sql.Identifier(name)) + sql.SQL(
        definition
    )


def encode_copy_binary(columns: list[tuple[str, np.ndarray]]) -> bytes:
    """Rows as one complete PostgreSQL binary COPY payload (signature, rows, trailer)."""
    return _PG_SIGNATURE + encode_copy_rows(columns) + _PG_TRAILER


def encode_copy_rows(columns: list[tuple[str, np.ndarray]]) -> bytes:
    """Rows in PostgreSQL's binary COPY layout, built by numpy without a Python loop; without
    signature and trailer, so that many chunks can follow each other in one ``COPY``.

    ``columns`` are ``(type, values)`` pairs, the type one of int4, int8, float8 or timestamptz
    (given in Unix seconds). Each row is a field count, then a length and a value per field.
    """
    layout: list[tuple[str, str]] = [("count", ">i2")]
    for index, (kind, _) in enumerate(columns):
        layout += [(f"len{index}", ">i4"), (f"value{index}", _PG_BINARY[kind])]
    rows = np.empty(len(columns[0][1]), dtype=np.dtype(layout))
    rows["count"] = len(columns)
    for index, (kind, values) in enumerate(columns):
        rows[f"len{index}"] = np.dtype(_PG_BINARY[kind]).itemsize
        if kind == "timestamptz":  # microseconds since 2000-01-01 UTC
            values = (values.astype(np.int64) - PG_EPOCH_OFFSET) * 1_000_000
        rows[f"value{index}"] = values
    return rows.tobytes()


def rating_columns(chunk: pd.DataFrame, with_line: bool) -> list[tuple[str, np.ndarray]]:
    """The COPY columns of a rating chunk: user, movie, rating, time (and line when staged)."""
    columns = [
        ("int4", chunk["user_id"].to_numpy()),
        ("int4", chunk["movie_id"].to_numpy()),
        ("float8", chunk["rating"].to_numpy()),
        ("timestamptz", chunk["timestamp"].to_numpy()),
    ]
    if with_line:
        columns.append(("int8", chunk["line"].to_numpy()))
    return columns


class RestartStaged(Exception):
    """The direct first load met a duplicate (user, movie) pair: it was undone, and the writer
    now expects the same chunks again, which it will merge through the staging table."""


_PG_STAGE_USERS = """
CREATE TEMP TABLE movierec_stage_users (id integer, created_at timestamptz) ON COMMIT DROP
"""
_PG_USERS_FROM_STAGE = """
INSERT INTO users (id, created_at) SELECT id, created_at FROM movierec_stage_users
ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at
WHERE EXCLUDED.created_at < users.created_at
"""


class PostgresWriter(StoreWriter):
    """Two ways in, both inside the one import transaction.

    - Direct (a large first load into an empty ratings table): the table's keys and indexes are
      dropped, chunks are streamed through one ``COPY`` straight into ``ratings`` (the server
      never waits for the next chunk's round trip: it parses one while Python encodes the
      next), users are derived in numpy, and the keys are rebuilt at the end. Rebuilding the
      primary key is what detects a duplicate (user, movie) pair in the input; then everything
      since a savepoint is undone and :class:`RestartStaged` asks for the chunks again.
    - Staged (otherwise): chunks are copied into a temporary table and merged at the end with
      ``INSERT ... ON CONFLICT DO UPDATE`` (newest wins, then the last line).
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.before = {t: _count(self.cursor, t) for t in ("movies", "users", "ratings")}
        # Sorting the staged ratings and building indexes stay in memory where they fit.
        self.cursor.execute("SET LOCAL work_mem = '512MB'")
        self.cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
        self.cursor.execute(_PG_STAGE)
        self.movies_changed = 0
        self.mode: str | None = None  # "direct" or "staged", chosen at the first chunk
        self.written = 0
        self.first_seen: list[pd.Series] = []  # per chunk: earliest rating time per user
        self.stream: Any = None  # the open ``COPY ratings`` of a direct load (a psycopg Copy)
        self.stream_context: Any = None  # the context manager that opened it
        self.phases: dict[str, float] = {}

    def movie_ids(self) -> np.ndarray:
        self.cursor.execute("SELECT id FROM movies")
        return np.array([row[0] for row in self.cursor.fetchall()], dtype=np.int64)

    def write_movies(self, movies: pd.DataFrame) -> None:
        self.cursor.execute(_PG_STAGE_MOVIES)
        with self.cursor.copy("COPY movierec_stage_movies FROM STDIN") as copy:
            for row in _movie_rows(movies):
                copy.write_row(row)
        self.cursor.execute(_PG_MOVIES)
        self.movies_changed += self.cursor.rowcount
        self.cursor.execute("DROP TABLE movierec_stage_movies")

    def _choose_mode(self, first_chunk_rows: int) -> str:
        """Direct when the first chunk is large and ratings is empty (checked under a lock)."""
        if self.before["ratings"] or first_chunk_rows < BULK_MIN_ROWS:
            return "staged"
        self.cursor.execute("LOCK TABLE ratings IN ACCESS EXCLUSIVE MODE")
        if not self.cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM ratings)").fetchone()[0]:
            return "staged"
        self.cursor.execute("SAVEPOINT movierec_direct")
        self.rebuild = _drop_ratings_keys(self.cursor)
        return "direct"

    def write_ratings(self, chunk: pd.DataFrame) -> None:
        if self.mode is None:
            self.mode = self._choose_mode(len(chunk))
        if self.mode == "direct":
            if self.stream is None:
                self._open_stream()
            self.first_seen.append(chunk.groupby("user_id", sort=False)["timestamp"].min())
            self.stream.write(encode_copy_rows(rating_columns(chunk, with_line=False)))
        else:
            payload = encode_copy_binary(rating_columns(chunk, with_line=True))
            with self.cursor.copy("COPY movierec_stage_ratings FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(payload)
        self.written += len(chunk)

    def _open_stream(self) -> None:
        """Start the one ``COPY`` that every chunk of a direct load is written into."""
        self.stream_context = self.cursor.copy(
            "COPY ratings (user_id, movie_id, rating, rated_at) FROM STDIN (FORMAT BINARY)"
        )
        self.stream = self.stream_context.__enter__()
        self.stream.write(_PG_SIGNATURE)
        self.stream_started = time.perf_counter()

    def _close_stream(self, error: BaseException | None) -> None:
        """End the direct load's ``COPY``: completed, or failed with ``error`` (the server then
        discards it, and the transaction can be rolled back)."""
        if self.stream is None:
            return
        stream, context = self.stream, self.stream_context
        self.stream = self.stream_context = None
        if error is None:
            stream.write(_PG_TRAILER)
            context.__exit__(None, None, None)
        else:
            context.__exit__(type(error), error, error.__traceback__)

    def abort(self, error: BaseException) -> None:
        with suppress(psycopg.Error):  # the connection is rolled back next either way
            self._close_stream(error)

    def finish(self) -> WriteResult:
        direct = self.mode == "direct"
        ratings_changed = self._finish_direct() if direct else self._finish_staged()
        started = time.perf_counter()
        _refresh_rating_counts(self.cursor)
        self.phases["movie rating counts"] = time.perf_counter() - started
        after = {t: _count(self.cursor, t) for t in ("movies", "users")}
        # A direct load filled an empty, locked table: no need to count it again.
        after["ratings"] = ratings_changed if direct else _count(self.cursor, "ratings")
        result = _result(self.before, after, self.movies_changed, ratings_changed)
        return replace(result, phases=dict(self.phases))

    def _finish_direct(self) -> int:
        self._close_stream(None)
        started = time.perf_counter()
        self.phases["ratings streamed (parse overlapped)"] = started - self.stream_started
        first = pd.concat(self.first_seen).groupby(level=0).min()
        self.cursor.execute(_PG_STAGE_USERS)
        users = [("int4", first.index.to_numpy()), ("timestamptz", first.to_numpy())]
        with self.cursor.copy("COPY movierec_stage_users FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(encode_copy_binary(users))
        self.cursor.execute(_PG_USERS_FROM_STAGE)
        self.phases["users"] = time.perf_counter() - started
        try:
            self.rebuild(self.phases)
        except psycopg.errors.UniqueViolation as exc:
            self.cursor.execute("ROLLBACK TO SAVEPOINT movierec_direct")
            self.mode, self.written, self.first_seen = "staged", 0, []
            raise RestartStaged from exc
        self.cursor.execute("RELEASE SAVEPOINT movierec_direct")
        return self.written

    def _finish_staged(self) -> int:
        self.cursor.execute("ANALYZE movierec_stage_ratings")
        self.cursor.execute(_PG_USERS)
        if self.written >= BULK_MIN_ROWS and self._still_empty():
            rebuild = _drop_ratings_keys(self.cursor)
            self.cursor.execute(_PG_RATINGS_BULK)
            changed = int(self.cursor.rowcount)
            rebuild()
            return changed
        self.cursor.execute(_PG_RATINGS)
        return int(self.cursor.rowcount)

    def _still_empty(self) -> bool:
        if self.before["ratings"]:
            return False
        self.cursor.execute("LOCK TABLE ratings IN ACCESS EXCLUSIVE MODE")
        return bool(self.cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM ratings)").fetchone()[0])


@contextmanager
def open_writer(database_url: str) -> Iterator[StoreWriter]:
    """A writer on a raw DBAPI connection whose single transaction commits when the block
    succeeds and rolls back on any error."""
    engine = make_engine(database_url)
    raw = engine.raw_connection()
    writer: StoreWriter | None = None
    try:
        driver = raw.driver_connection
        if engine.dialect.name == "postgresql":
            writer = PostgresWriter(driver)
        elif engine.dialect.name == "sqlite":
            writer = SqliteWriter(driver)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        yield writer
        raw.commit()
    except BaseException as exc:
        if writer is not None:
            writer.abort(exc)
        raw.rollback()
        raise
    finally:
        raw.close()
        engine.dispose()
