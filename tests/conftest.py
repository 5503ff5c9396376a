"""Shared fixtures: every test database is built by running the migrations.

Databases: SQLite (a file per test session) and the PostgreSQL server at
``MOVIEREC_TEST_PG`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432``), where each test
session creates its own database and drops it afterwards. Without a reachable server the
PostgreSQL cases are skipped locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db import migrate
from app.db.base import Base
from app.db.session import make_engine

PG_SERVER = os.environ.get("MOVIEREC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin_conn():
    import psycopg

    dsn = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def _pg_available() -> str | None:
    try:
        with _pg_admin_conn():
            return None
    except Exception as exc:  # pragma: no cover - depends on the machine
        return str(exc)


class Database:
    """A migrated database: its URL and helpers to reset it between tests."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self.engine = make_engine(url)

    def reset(self) -> None:
        """Delete every row (children first), keeping the schema."""
        with self.engine.begin() as conn:
            if self.backend == "postgresql":
                names = ", ".join(t.name for t in Base.metadata.sorted_tables)
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            else:
                for table in reversed(Base.metadata.sorted_tables):
                    conn.execute(table.delete())


def _create_database(backend: str, tmp: Path) -> Iterator[Database]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'test-{uuid.uuid4().hex[:8]}.db'}"
        migrate.upgrade(url)
        db = Database(backend, url)
        yield db
        db.engine.dispose()
        return
    reason = _pg_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is unreachable in CI: {reason}")
        pytest.skip(f"PostgreSQL not reachable: {reason}")
    name = f"movierec_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    try:
        migrate.upgrade(url)
        db = Database(backend, url)
        yield db
        db.engine.dispose()
    finally:
        from app.db.session import get_engine

        get_engine.cache_clear()
        with _pg_admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def database_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One migrated database per backend for the whole test session."""
    yield from _create_database(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture
def database(database_session: Database) -> Iterator[Database]:
    """A migrated, empty database (SQLite and PostgreSQL), emptied again after the test."""
    database_session.reset()
    yield database_session
    database_session.reset()


@pytest.fixture
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path):
    """A brand-new database of the backend given by indirect parametrisation (migrations tests)."""
    yield from _create_database(getattr(request, "param", "sqlite"), tmp_path)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database: Database):
    """Settings pointing at the test database and a temporary model folder."""
    from app.config import get_settings

    monkeypatch.setenv("MOVIEREC_DATABASE_URL", database.url)
    monkeypatch.setenv("MOVIEREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MOVIEREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOVIEREC_ENVIRONMENT", "test")
    get_settings.cache_clear()
    yield database
    get_settings.cache_clear()
