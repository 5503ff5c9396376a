"""Migrations: upgrade → downgrade → upgrade on both databases; the ORM matches them."""

from __future__ import annotations

import itertools

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import migrate
from app.db.base import Base
from app.db.session import make_engine
from app.repositories import movies as movies_repo

EXPECTED_TABLES = {
    "movies",
    "users",
    "ratings",
    "model_versions",
    "training_jobs",
    "workers",
    "catalogue_version",
}


@pytest.mark.parametrize("fresh_database", ["sqlite", "postgresql"], indirect=True)
def test_upgrade_downgrade_upgrade(fresh_database) -> None:
    url = fresh_database.url
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    migrate.downgrade(url, "base")
    engine.dispose()
    assert not EXPECTED_TABLES & set(inspect(make_engine(url)).get_table_names())
    migrate.upgrade(url)
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    assert migrate.current(url) is not None
    engine.dispose()


@pytest.mark.parametrize("fresh_database", ["sqlite", "postgresql"], indirect=True)
def test_orm_matches_migrations(fresh_database) -> None:
    engine = make_engine(fresh_database.url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == []


def test_constraints_enforced(database) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO movies (id, title, genres) VALUES (1, 'A', '')"))
        conn.execute(text("INSERT INTO users (id) VALUES (1)"))
        conn.execute(text("INSERT INTO ratings (user_id, movie_id, rating) VALUES (1, 1, 4)"))
    bad = [
        "INSERT INTO ratings (user_id, movie_id, rating) VALUES (1, 1, 3)",  # duplicate pair
        "INSERT INTO ratings (user_id, movie_id, rating) VALUES (1, 2, 3)",  # unknown movie
        "INSERT INTO ratings (user_id, movie_id, rating) VALUES (2, 1, 3)",  # unknown user
        "UPDATE ratings SET rating = 5.5",  # out of range
        "UPDATE ratings SET rating = 0",
    ]
    for stmt in bad:
        with pytest.raises(IntegrityError), database.engine.begin() as conn:
            conn.execute(text(stmt))
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (path, sha256, manifest, metrics, status, is_active,"
                " created_at) VALUES ('a', 'x', '{}', '{}', 'active', true, CURRENT_TIMESTAMP)"
            )
        )
    with pytest.raises(IntegrityError), database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (path, sha256, manifest, metrics, status, is_active,"
                " created_at) VALUES ('b', 'x', '{}', '{}', 'active', true, CURRENT_TIMESTAMP)"
            )
        )


@pytest.mark.parametrize("fresh_database", ["sqlite", "postgresql"], indirect=True)
def test_search_columns_are_filled_for_stored_movies(fresh_database) -> None:
    """Revision 0003 gives the movies already stored their search key and rating count."""
    url = fresh_database.url
    migrate.downgrade(url, "0002")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO movies (id, title, genres) VALUES "
                "(1, 'Godfather, The', ''), (2, 'Amélie', ''), (3, 'Heat', '')"
            )
        )
        conn.execute(text("INSERT INTO users (id) VALUES (1), (2)"))
        conn.execute(
            text(
                "INSERT INTO ratings (user_id, movie_id, rating) VALUES "
                "(1, 1, 5), (2, 1, 4), (1, 2, 3)"
            )
        )
    engine.dispose()
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, search_title, rating_count FROM movies ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "godfather", 2), (2, "amelie", 1), (3, "heat", 0)]


def test_every_write_to_movies_bumps_the_catalogue_version(database) -> None:
    """Insert, update (a title only: count and largest id unchanged), delete, empty."""

    def version() -> int:
        with Session(database.engine) as session:
            return movies_repo.signature(session)

    seen = [version()]
    for stmt in (
        "INSERT INTO movies (id, title, genres) VALUES (1, 'A', ''), (2, 'B', '')",
        "UPDATE movies SET title = 'A2' WHERE id = 1",
        "UPDATE movies SET genres = 'Drama' WHERE id = 2",
        "DELETE FROM movies WHERE id = 2",
        "DELETE FROM movies",
    ):
        with database.engine.begin() as conn:
            conn.execute(text(stmt))
        seen.append(version())
    assert all(b > a for a, b in itertools.pairwise(seen)), seen
    with database.engine.begin() as conn:  # a write that is rolled back changes nothing
        conn.execute(text("INSERT INTO movies (id, title, genres) VALUES (3, 'C', '')"))
        conn.rollback()
    assert version() == seen[-1]
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO movies (id, title, genres) VALUES (4, 'D', '')"))
    before = version()
    with database.engine.begin() as conn:  # a rating count is not the catalogue
        conn.execute(text("UPDATE movies SET rating_count = rating_count + 1 WHERE id = 4"))
    assert version() == before
