"""A write is committed before its response is sent; a failed commit is a 503, never a 2xx.

The commit failure is the store's own: on PostgreSQL a deferred constraint trigger that raises a
serialization failure when the transaction commits, on SQLite the driver's commit raising
``disk I/O error`` (SQLite has no deferred triggers).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import app_settings, assert_problem, rating_rows

FAIL_AT_COMMIT = """
CREATE FUNCTION movierec_test_fail_at_commit() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'injected failure at commit' USING ERRCODE = '40001';
END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER movierec_test_fail_at_commit
    AFTER INSERT OR UPDATE OR DELETE ON ratings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION movierec_test_fail_at_commit();
"""
DROP_FAIL_AT_COMMIT = """
DROP TRIGGER IF EXISTS movierec_test_fail_at_commit ON ratings;
DROP FUNCTION IF EXISTS movierec_test_fail_at_commit();
"""


@pytest.fixture
def failing_commits(served: Any, tmp_path: Path) -> Iterator[TestClient]:
    """A client of an app whose store fails every commit that writes a rating."""
    app = create_app(app_settings(served.url, tmp_path))
    if served.backend == "postgresql":
        with served.engine.begin() as conn:
            conn.execute(text(FAIL_AT_COMMIT))
    else:
        dialect = app.state.engine.dialect

        def do_commit(dbapi_connection: Any) -> None:
            if dbapi_connection.in_transaction:  # a transaction that wrote something
                raise sqlite3.OperationalError("disk I/O error")

        dialect.do_commit = do_commit
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        if served.backend == "postgresql":
            with served.engine.begin() as conn:
                conn.execute(text(DROP_FAIL_AT_COMMIT))


def stored(served: Any, user_id: int, movie_id: int) -> float | None:
    with served.engine.connect() as conn:
        value = conn.execute(
            text("SELECT rating FROM ratings WHERE user_id = :u AND movie_id = :m"),
            {"u": user_id, "m": movie_id},
        ).scalar()
    return None if value is None else float(value)


def test_a_failed_commit_is_a_503_and_nothing_is_stored(failing_commits: TestClient, served):
    created = failing_commits.put("/v1/users/424242/ratings/7", json={"rating": 4})
    body = assert_problem(created, 503, "not stored")
    assert created.headers["retry-after"].isdigit(), created.headers
    assert body["type"].endswith("/notstored")
    assert stored(served, 424242, 7) is None
    with served.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE id = 424242")).scalar() == 0
    # The hot route (plain ASGI, its own reader) sees no such user either.
    assert_problem(failing_commits.get("/v1/users/424242/recommendations"), 404, "424242")

    user, movie, old = next((u, m, r) for u, m, r in rating_rows() if u == 2)
    new = 0.5 if old != 0.5 else 1.0
    assert_problem(failing_commits.put(f"/v1/users/2/ratings/{movie}", json={"rating": new}), 503)
    assert stored(served, user, movie) == old
    assert_problem(failing_commits.delete(f"/v1/users/2/ratings/{movie}"), 503)
    assert stored(served, user, movie) == old
    # Reads commit nothing and are unaffected.
    assert failing_commits.get("/v1/users/2/ratings").json()["total"] == 12


def test_an_acknowledged_write_is_visible_to_the_next_request(client: TestClient, served):
    put = client.put("/v1/users/424242/ratings/7", json={"rating": 4})
    assert put.status_code == 201
    assert stored(served, 424242, 7) == 4.0
