"""Health, readiness, metrics, request ids and problem+json for every kind of error."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db import migrate
from app.main import STATIC_DIR, create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import (
    NEW_USER,
    app_settings,
    assert_problem,
    register_result,
    seed_store,
)
from tests.conftest import PG_SERVER, _pg_admin_conn


def test_healthz(bare_client: TestClient) -> None:
    assert bare_client.get("/healthz").json() == {"status": "ok"}


def test_readyz_ready_with_a_model(client: TestClient, served) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["model"]["version"] == served.version_id and r.json()["database"]["ok"]
    assert r.json()["model"]["device"] == "cpu"
    assert r.json()["model"]["precision"] == "float32"  # a small catalogue: float32 throughout


def test_readyz_503_without_a_model(bare_client: TestClient) -> None:
    r = bare_client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["database"]["ok"] and not body["model"]["loaded"]
    assert "movierec train" in body["model"]["error"]


def test_metrics_count_requests_per_route_template(client: TestClient, served) -> None:
    client.get("/v1/users/2/recommendations")
    client.get("/v1/users/4/recommendations")
    client.get(f"/v1/users/{NEW_USER}/recommendations")
    client.get("/v1/movies/12345")
    text_ = client.get("/metrics").text
    assert (
        'movierec_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",'
        'status="200"} 3.0' in text_
    )
    assert 'route="/v1/movies/{movie_id}",status="404"} 1.0' in text_
    assert "movierec_http_request_duration_seconds_bucket" in text_
    assert f"movierec_model_version {float(served.version_id)}" in text_
    assert 'movierec_recommendations_total{source="model"} 2.0' in text_
    assert 'movierec_recommendations_total{source="popular"} 1.0' in text_
    assert 'movierec_training_jobs{status="queued"} 0.0' in text_


def test_metrics_label_pages_mounts_and_openapi_by_template(bare_client: TestClient) -> None:
    """Every route that answered is labelled by its template, Starlette's routes and mounts
    included; "unmatched" is left for paths no route matched (404)."""
    for path in (
        "/docs",
        "/redoc",
        "/openapi.json",
        "/",
        "/static/app.css",
        "/docs/assets/swagger-ui.css",
        "/docs/assets/redoc.standalone.js",
    ):
        assert bare_client.get(path).status_code == 200, path
    assert bare_client.get("/static/no-such-file.css").status_code == 404
    assert bare_client.post("/openapi.json").status_code == 405
    assert bare_client.get("/v1/nothing-here").status_code == 404
    text_ = bare_client.get("/metrics").text
    for route, status, count in [
        ("/docs", 200, 1),
        ("/redoc", 200, 1),
        ("/openapi.json", 200, 1),
        ("/", 200, 1),
        ("/static/{path}", 200, 1),
        ("/static/{path}", 404, 1),
        ("/openapi.json", 405, 1),
        ("/docs/assets/{path}", 200, 1),
        ("/docs/assets/redoc.standalone.js", 200, 1),
        ("unmatched", 404, 1),
    ]:
        line = (
            f'movierec_http_requests_total{{method="{"POST" if status == 405 else "GET"}",'
            f'route="{route}",status="{status}"}} {count:.1f}'
        )
        assert line in text_, line
    unmatched = [
        line
        for line in text_.splitlines()
        if line.startswith("movierec_http_requests_total{") and 'route="unmatched"' in line
    ]
    assert unmatched == [
        'movierec_http_requests_total{method="GET",route="unmatched",status="404"} 1.0'
    ]


def test_request_id_is_echoed_or_generated(bare_client: TestClient) -> None:
    r = bare_client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = bare_client.get("/v1/movies/777").headers["x-request-id"]
    assert len(generated) == 32
    assert bare_client.get("/v1/movies/777").json()["request_id"] != generated


def test_unknown_route_and_wrong_method_are_problems(bare_client: TestClient) -> None:
    assert_problem(bare_client.get("/v1/nothing-here"), 404, "/v1/nothing-here")
    r = bare_client.post("/v1/movies/1")
    assert_problem(r, 405, "POST")
    assert "GET" in r.headers["allow"]


def test_validation_errors_are_problems_listing_fields(bare_client: TestClient) -> None:
    body = assert_problem(bare_client.get("/v1/movies?limit=abc&offset=-5"), 422, "limit", "offset")
    assert {e["field"] for e in body["errors"]} == {"query.limit", "query.offset"}


def test_oversized_bodies_are_413(served, tmp_path: Path) -> None:
    settings = app_settings(served.url, tmp_path, max_body_bytes=200)
    with TestClient(create_app(settings)) as c:
        big = {"ratings": [{"movie_id": 1, "rating": 4}] * 20}
        assert_problem(c.post("/v1/recommendations", json=big), 413, "200 bytes")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is counted
            yield b'{"ratings": ['
            for _ in range(20):
                yield b'{"movie_id": 1, "rating": 4},'
            yield b'{"movie_id": 1, "rating": 4}]}'

        r = c.post(
            "/v1/recommendations", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(r, 413)
        assert c.post("/v1/recommendations", json={"n": 1}).status_code == 200


@pytest.mark.skipif(not (STATIC_DIR / "index.html").exists(), reason="the page is not built")
def test_page_is_served(bare_client: TestClient) -> None:
    r = bare_client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "<html" in r.text.lower()


# -- the database going away and coming back ------------------------------------------------
# (url, take_away, bring_back)
MovableStore = tuple[str, Callable[[], None], Callable[[], None]]


@pytest.fixture(params=["sqlite", "postgresql"])
def movable_store(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model
) -> Iterator[MovableStore]:
    """A store of its own that the test can take away: ``(url, take_away, bring_back)``."""
    if request.param == "sqlite":
        folder = tmp_path / "store"
        folder.mkdir()
        url = f"sqlite:///{folder / 'movable.db'}"
        migrate.upgrade(url)
        seed_store(url)
        register_result(url, tiny_model.result)
        hidden = tmp_path / "hidden"

        def hide_folder() -> None:
            folder.rename(hidden)

        def restore_folder() -> None:
            hidden.rename(folder)

        yield url, hide_folder, restore_folder
        return
    try:
        admin = _pg_admin_conn()
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"movierec_movable_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    migrate.upgrade(url)
    seed_store(url)
    register_result(url, tiny_model.result)
    terminate = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )

    def rename_database_away() -> None:
        admin.execute(terminate, (name,))
        admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')

    def rename_database_back() -> None:
        admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')

    try:
        yield url, rename_database_away, rename_database_back
    finally:
        for db in (name, f"{name}_away"):
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_database_down_gives_503_problems_then_recovers(
    movable_store: MovableStore, tmp_path: Path
) -> None:
    url, take_away, bring_back = movable_store
    app = create_app(app_settings(url, tmp_path))
    with TestClient(app) as c:
        assert c.get("/v1/users/2/recommendations").status_code == 200
        take_away()
        app.state.engine.dispose()  # drop pooled connections, as a restarted pool would
        ready = c.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["database"]["ok"]
        assert ready.json()["database"]["error"]
        for path in ("/v1/users/2/recommendations", "/v1/movies", "/v1/users/2/ratings"):
            r = c.get(path)
            assert_problem(r, 503, "database")
            assert r.headers["retry-after"]
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        bring_back()
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/users/2/recommendations").status_code == 200
        with app.state.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM movies")).scalar() == 30
