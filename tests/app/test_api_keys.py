"""Keys for user data: ``MOVIEREC_API_KEYS``.

When set, every route that reads or writes a user's data or computes recommendations needs
``Authorization: Bearer <key>`` (the hot route included); the catalogue, health and metrics stay
open; admin routes take the admin token only. Production refuses to serve without keys unless
``MOVIEREC_PUBLIC_API`` states that the API is deliberately public.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import ADMIN_TOKEN, admin_headers, app_settings, assert_problem
from tests.app.test_api_hot_route import hot_layer

KEYS = ("first-key-0123456789abcdef", "second-key-0123456789abcdef")
PG_URL = "postgresql+psycopg://movierec@db.invalid:5432/movierec"  # never connected to


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(served: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = app_settings(served.url, tmp_path, api_keys=",".join(KEYS))
    with TestClient(create_app(settings)) as client:
        yield client


USER_DATA = [
    ("GET", "/v1/users/2/recommendations?n=3", None),
    ("GET", "/v1/users/2/recommendations?n=3&genres=Drama&genres=Comedy", None),
    ("GET", "/v1/users/2/predictions?movie_ids=1,2", None),
    ("GET", "/v1/users/2/ratings", None),
    ("PUT", "/v1/users/2/ratings/1", {"rating": 4}),
    ("POST", "/v1/recommendations", {"ratings": [{"movie_id": 1, "rating": 5}]}),
]


@pytest.mark.parametrize(("method", "url", "body"), USER_DATA)
def test_user_data_needs_a_key(keyed: TestClient, method: str, url: str, body: Any) -> None:
    for headers in ({}, bearer("not-a-key-0123456789abcdef"), {"Authorization": KEYS[0]}):
        refused = keyed.request(method, url, json=body, headers=headers)
        assert_problem(refused, 401, "key")
        assert refused.headers["www-authenticate"] == 'Bearer realm="movierec"'
    for key in KEYS:
        assert keyed.request(method, url, json=body, headers=bearer(key)).status_code in (200, 201)


def test_the_hot_route_answers_only_with_a_key(keyed: TestClient) -> None:
    layer = hot_layer(keyed.app)
    before = layer.answered
    assert keyed.get("/v1/users/2/recommendations").status_code == 401
    assert layer.answered == before
    assert keyed.get("/v1/users/2/recommendations", headers=bearer(KEYS[1])).status_code == 200
    assert layer.answered == before + 1


def test_a_refused_write_stores_nothing(keyed: TestClient) -> None:
    assert keyed.put("/v1/users/777/ratings/1", json={"rating": 4}).status_code == 401
    assert keyed.get("/v1/users/777/ratings", headers=bearer(KEYS[0])).status_code == 404


def test_the_catalogue_health_and_metrics_stay_open(keyed: TestClient) -> None:
    for url in ("/v1/movies", "/v1/movies/1", "/v1/movies/1/similar", "/healthz", "/readyz"):
        assert keyed.get(url).status_code == 200, url
    assert keyed.get("/metrics").status_code == 200
    assert keyed.get("/").status_code == 200


def test_admin_routes_take_the_admin_token_not_a_key(keyed: TestClient) -> None:
    assert keyed.get("/v1/admin/models", headers=bearer(KEYS[0])).status_code == 401
    assert keyed.get("/v1/admin/models", headers=admin_headers()).status_code == 200


def test_without_keys_user_data_is_open_and_the_document_declares_no_key(client: TestClient):
    assert client.get("/v1/users/2/ratings").status_code == 200
    document = client.get("/openapi.json").json()
    assert "apiKey" not in document["components"]["securitySchemes"]
    assert "security" not in document["paths"]["/v1/users/{user_id}/ratings"]["get"]


def test_with_keys_the_document_declares_them(keyed: TestClient) -> None:
    document = keyed.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    ratings = document["paths"]["/v1/users/{user_id}/ratings"]["get"]
    assert ratings["security"] == [{"apiKey": []}] and "401" in ratings["responses"]
    assert "security" not in document["paths"]["/v1/movies"]["get"]


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "database_url": PG_URL,
        "admin_token": ADMIN_TOKEN,
        "device": "cpu",
    }
    return Settings(**{**values, **overrides})


def test_production_refuses_to_serve_without_keys() -> None:
    with pytest.raises(ValueError, match="MOVIEREC_API_KEYS"):
        create_app(production())
    create_app(production(api_keys=KEYS[0]))  # builds (nothing is connected to yet)
    create_app(production(public_api=True))
    with pytest.raises(ValueError, match="16 characters"):
        production(api_keys="short")
