"""Shared pieces of the web-service tests: a tiny store, a tiny trained model, app settings.

Test modules import the fixtures they need from here. The model is trained once per test
session with ``ml.fit.pipeline`` on a small synthetic store (two taste groups over 30 movies),
so every API test runs against a real checkpoint on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import migrate
from app.db.models import Movie, Rating, User
from app.db.session import make_engine
from app.main import create_app
from app.services import registry

# Fixtures, for ``from tests.app.test_api_helpers import *`` in the test modules.
__all__ = ["bare_client", "client", "seeded", "served", "tiny_model"]

ADMIN_TOKEN = "test-admin-token-0123456789"
N_MOVIES = 30
N_USERS = 40
GROUP_A_MOVIES = range(1, 16)  # Action|Comedy, liked by even users
GROUP_B_MOVIES = range(16, N_MOVIES + 1)  # Drama, liked by odd users
NEW_USER = 999  # exists, no ratings
TINY_MODEL = {"hidden": [16], "wide_max_items": 100}


def movie_rows() -> list[dict[str, Any]]:
    rows = []
    for m in range(1, N_MOVIES + 1):
        genres = "Action|Comedy" if m in GROUP_A_MOVIES else "Drama"
        rows.append({"id": m, "title": f"Film {m:02d}", "year": 1980 + m, "genres": genres})
    return rows


def rating_rows(seed: int = 7) -> list[tuple[int, int, float]]:
    """Each user rates 12 movies: high in their group, low in the other."""
    rng = random.Random(seed)
    rows: list[tuple[int, int, float]] = []
    for u in range(1, N_USERS + 1):
        liked, other = (
            (GROUP_A_MOVIES, GROUP_B_MOVIES) if u % 2 == 0 else (GROUP_B_MOVIES, GROUP_A_MOVIES)
        )
        for m in rng.sample(list(liked), 9):
            rows.append((u, m, rng.choice([4.0, 4.5, 5.0])))
        for m in rng.sample(list(other), 3):
            rows.append((u, m, rng.choice([1.0, 1.5, 2.0])))
    return rows


def seed_store(url: str, ratings: list[tuple[int, int, float]] | None = None) -> None:
    """Fill an empty migrated store with the tiny catalogue, users and ratings."""
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            session.add_all(Movie(**row) for row in movie_rows())
            rows = rating_rows() if ratings is None else ratings
            users = sorted({u for u, _, _ in rows} | {NEW_USER})
            session.add_all(User(id=u) for u in users)
            session.flush()
            session.add_all(Rating(user_id=u, movie_id=m, rating=r) for u, m, r in rows)
    finally:
        engine.dispose()


def train_tiny(url: str, out_dir: Path, epochs: int = 2, seed: int = 0) -> Any:
    """Train a tiny model on the store at ``url`` with ``ml.fit.pipeline``; the ``TrainResult``."""
    from ml.fit.config import preset, with_overrides
    from ml.fit.pipeline import train_from_store

    config = with_overrides(
        preset("default"),
        {
            "epochs": epochs,
            "batch_size": 16,
            "device": "cpu",
            "progress": False,
            "seed": seed,
            "val_frac": 0.2,
            "log_file": str(out_dir.parent / "train-log.jsonl"),
            "model": TINY_MODEL,
        },
    )
    return train_from_store(url, out_dir, config)


def register_result(url: str, result: Any, *, activate: bool = True) -> int:
    """Register a trained checkpoint in the store at ``url`` (and activate it); its id."""
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            version = registry.register_version(
                session,
                path=str(result.path),
                sha256=result.sha256,
                manifest=result.manifest,
                metrics=result.metrics,
            )
            if activate:
                registry.activate(session, version.id)
            return version.id
    finally:
        engine.dispose()


@dataclass(frozen=True)
class TinyModel:
    """A trained checkpoint, for reuse by every test of the session."""

    result: Any
    path: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    folder = tmp_path_factory.mktemp("tiny-model")
    url = f"sqlite:///{folder / 'train.db'}"
    migrate.upgrade(url)
    seed_store(url)
    result = train_tiny(url, folder / "models")
    return TinyModel(result, Path(result.path))


def app_settings(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for an app under test: fast polls, an admin token, CPU."""
    values: dict[str, Any] = {
        "database_url": url,
        "model_dir": tmp_path / "models",
        "data_dir": tmp_path / "data",
        "environment": "test",
        "device": "cpu",
        "admin_token": ADMIN_TOKEN,
        "model_poll_seconds": 0.2,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def seeded(env: Any) -> Any:
    """The test database with the tiny catalogue and ratings, no model registered."""
    seed_store(env.url)
    return env


@pytest.fixture
def served(seeded: Any, tiny_model: TinyModel) -> Any:
    """The seeded database with the tiny model registered and active."""
    seeded.version_id = register_result(seeded.url, tiny_model.result)
    return seeded


@pytest.fixture
def client(served: Any, tmp_path: Path) -> Iterator[TestClient]:
    """A TestClient (lifespan run) on the seeded store with the tiny model serving."""
    with TestClient(create_app(app_settings(served.url, tmp_path))) as test_client:
        yield test_client


@pytest.fixture
def bare_client(seeded: Any, tmp_path: Path) -> Iterator[TestClient]:
    """A TestClient on the seeded store with no model at all."""
    with TestClient(create_app(app_settings(seeded.url, tmp_path))) as test_client:
        yield test_client


def assert_problem(response: Any, status: int, *needles: str) -> dict[str, Any]:
    """The response is a problem+json of ``status`` whose detail contains each needle."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["type"]
    for needle in needles:
        assert needle in body["detail"], body
    return body


def copy_checkpoint(tiny: TinyModel, dest: Path, *, corrupt: bool = False) -> Any:
    """A copy of the tiny checkpoint in a new folder (a distinct version), optionally with its
    weights damaged so that verification fails; a ``TrainResult``-like object for registering."""
    import shutil

    target = dest / f"copy-{len(list(dest.glob('copy-*')))}" if dest.exists() else dest / "copy-0"
    shutil.copytree(tiny.path, target)
    if corrupt:
        weights = target / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
        weights.write_bytes(bytes(data))
    result = tiny.result
    return type(result)(target, result.sha256, result.manifest, result.metrics)
