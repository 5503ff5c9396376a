"""RatingsReader: the hot path's raw query, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import insert, update

from app.db.models import Movie, Rating, User
from app.repositories.ratings import RatingsReader
from tests.conftest import Database


def _store(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(insert(Movie), [{"id": m, "title": f"Movie {m}"} for m in (1, 2, 3)])
        conn.execute(insert(User), [{"id": 7}, {"id": 8}])
        conn.execute(
            insert(Rating),
            [
                {"user_id": 7, "movie_id": 1, "rating": 4.5},
                {"user_id": 7, "movie_id": 3, "rating": 2.0},
            ],
        )


def test_reads_a_users_ratings_and_knows_who_exists(database: Database) -> None:
    _store(database)
    reader = RatingsReader(database.engine)
    try:
        assert reader.for_user(7) == {1: 4.5, 3: 2.0}
        assert reader.for_user(8) == {}
        assert reader.user_exists(8) and not reader.user_exists(9)
    finally:
        reader.close()


def test_sees_every_committed_write_at_once(database: Database) -> None:
    _store(database)
    reader = RatingsReader(database.engine)
    try:
        assert reader.for_user(7)[1] == 4.5
        with database.engine.begin() as conn:  # another connection, as the API's writes are
            conn.execute(update(Rating).where(Rating.movie_id == 1).values(rating=1.0))
            conn.execute(insert(Rating).values(user_id=7, movie_id=2, rating=5.0))
        assert reader.for_user(7) == {1: 1.0, 2: 5.0, 3: 2.0}
    finally:
        reader.close()


def test_one_connection_per_thread_and_a_fresh_one_after_close(database: Database) -> None:
    _store(database)
    reader = RatingsReader(database.engine)
    try:
        reader.for_user(7)
        reader.for_user(7)
        seen: list[dict[int, float]] = []
        worker = threading.Thread(target=lambda: seen.append(reader.for_user(7)))
        worker.start()
        worker.join()
        assert seen == [{1: 4.5, 3: 2.0}]
        assert len(reader._open) == 2  # this thread's and the worker's, each kept
        reader.close()
        assert reader._open == []
        assert reader.for_user(7) == {1: 4.5, 3: 2.0}  # reconnects on demand
    finally:
        reader.close()


def test_engine_disposal_closes_the_readers_connections(database: Database) -> None:
    _store(database)
    reader = RatingsReader(database.engine)
    reader.for_user(7)
    database.engine.dispose()
    assert reader._open == []
    assert reader.for_user(7) == {1: 4.5, 3: 2.0}
    reader.close()


def test_a_broken_connection_is_replaced_once(database: Database) -> None:
    _store(database)
    reader = RatingsReader(database.engine)
    try:
        reader.for_user(7)
        reader._local.conn.close()  # e.g. the server closed it
        assert reader.for_user(7) == {1: 4.5, 3: 2.0}
    finally:
        reader.close()


def test_an_unreachable_store_raises_sqlalchemys_error(database: Database) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    url = (
        "sqlite:///nonexistent-folder/store.db"
        if database.backend == "sqlite"
        else "postgresql+psycopg://postgres@127.0.0.1:5432/movierec_no_such_database"
    )
    reader = RatingsReader(create_engine(url))
    with pytest.raises(OperationalError) as caught:  # mapped to 503 by the problem handlers
        reader.for_user(7)
    assert caught.value.orig is not None
