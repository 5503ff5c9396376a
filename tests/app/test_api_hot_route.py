"""The hot route's plain-ASGI layer answers exactly as the declared FastAPI route does.

Every comparison is made against an application built the same way but without the layer, so
each request below is answered once by ``HotRecommendations`` and once by the declared route.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from app.api.hot import HotRecommendations
from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import app_settings

ROUTE = "/v1/users/{user_id}/recommendations"


def hot_layer(app: ASGIApp) -> HotRecommendations:
    assert isinstance(app, FastAPI), "a test client of the FastAPI application"
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, HotRecommendations):
        layer = getattr(layer, "app", None)
    assert layer is not None, "the hot layer is not in the middleware stack"
    return layer


@pytest.fixture
def clients(served: Any, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """(with the hot layer, without it) on the same store and model."""
    hot_app = create_app(app_settings(served.url, tmp_path / "hot"))
    plain_app = create_app(app_settings(served.url, tmp_path / "plain"))
    plain_app.user_middleware = [
        m for m in plain_app.user_middleware if m.cls is not HotRecommendations
    ]
    with TestClient(hot_app) as hot, TestClient(plain_app) as plain:
        yield hot, plain


def comparable(response: Any) -> tuple[int, str, str | None, Any]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("request_id", None)  # differs per request by design
    return (
        response.status_code,
        response.headers["content-type"],
        response.headers.get("x-model-version"),
        body,
    )


WELL_FORMED = [
    "",
    "?n=5",
    "?n=3&offset=2",
    "?n=100",
    "?genres=drama&year_min=2000&year_max=2005&n=50",
    "?genres=Drama,%20Comedy",
    "?exclude=1,2,3&n=7",
    "?n=4&unknown=ignored",
]


@pytest.mark.parametrize("query", WELL_FORMED)
def test_well_formed_requests_are_answered_by_the_layer_as_by_the_route(
    clients: tuple[TestClient, TestClient], query: str
) -> None:
    hot, plain = clients
    url = f"/v1/users/2/recommendations{query}"
    layer_answers = hot_layer(hot.app).answered
    fast, reference = hot.get(url), plain.get(url)
    assert fast.status_code == 200
    assert comparable(fast) == comparable(reference)
    assert int(fast.headers["content-length"]) == len(fast.content)
    assert fast.headers["x-request-id"]
    assert hot_layer(hot.app).answered == layer_answers + 1


UNUSUAL = [
    "/v1/users/2/recommendations?n=0",
    "/v1/users/2/recommendations?n=101",
    "/v1/users/2/recommendations?n=abc",
    "/v1/users/2/recommendations?n=",
    "/v1/users/2/recommendations?n=5&n=6",
    "/v1/users/2/recommendations?offset=10001",
    "/v1/users/2/recommendations?year_min=-1",
    "/v1/users/2/recommendations?exclude=1,x",
    "/v1/users/2/recommendations?genres=" + "a" * 2001,
    "/v1/users/123456/recommendations",
    "/v1/users/99999999999/recommendations",
    "/v1/users/abc/recommendations",
    "/v1/users/2/recommendations/",
]


@pytest.mark.parametrize("url", UNUSUAL)
def test_unusual_requests_get_the_declared_routes_answer(
    clients: tuple[TestClient, TestClient], url: str
) -> None:
    hot, plain = clients
    layer_answers = hot_layer(hot.app).answered
    fast, reference = hot.get(url, follow_redirects=False), plain.get(url, follow_redirects=False)
    assert fast.status_code == reference.status_code
    if fast.headers.get("content-type", "").startswith("application/"):
        assert comparable(fast) == comparable(reference)
    assert hot_layer(hot.app).answered == layer_answers


def test_no_model_is_the_declared_503(bare_client: TestClient) -> None:
    r = bare_client.get("/v1/users/2/recommendations")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"]
    assert hot_layer(bare_client.app).answered == 0


def test_metrics_and_request_ids_still_apply(clients: tuple[TestClient, TestClient]) -> None:
    hot, _ = clients
    r = hot.get("/v1/users/2/recommendations?n=3", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    metrics = hot.get("/metrics").text
    assert f'route="{ROUTE}",status="200"' in metrics
    assert 'movierec_recommendations_total{source="model"}' in metrics


def test_the_openapi_document_still_describes_the_route(
    clients: tuple[TestClient, TestClient],
) -> None:
    hot, plain = clients
    assert hot.get("/openapi.json").json() == plain.get("/openapi.json").json()
    params = hot.get("/openapi.json").json()["paths"][ROUTE]["get"]["parameters"]
    names = {p["name"] for p in params}
    assert names == {"user_id", "n", "offset", "genres", "year_min", "year_max", "exclude"}


@pytest.fixture
def memo_client(served: Any, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(served.url, tmp_path, result_memo_size=2))) as client:
        yield client


def test_the_memo_answers_repeats_exactly_and_never_a_stale_answer(
    memo_client: TestClient, client: TestClient
) -> None:
    memo = memo_client.app.state.memo  # type: ignore[attr-defined]
    url = "/v1/users/2/recommendations?n=3"
    first = memo_client.get(url)
    again = memo_client.get(url)
    assert (memo.misses, memo.hits) == (1, 1)
    assert comparable(again) == comparable(first) == comparable(client.get(url))
    # A new rating changes the ratings the next request reads: computed again, not served
    # from the memo.
    top = first.json()["items"][0]["movie_id"]
    assert memo_client.put(f"/v1/users/2/ratings/{top}", json={"rating": 1.0}).status_code in (
        200,
        201,
    )
    after = memo_client.get(url)
    assert (memo.misses, memo.hits) == (2, 1)
    assert top not in [item["movie_id"] for item in after.json()["items"]]
    assert comparable(after) == comparable(client.get(url))


def test_the_memo_is_bounded_and_keyed_on_the_parameters(memo_client: TestClient) -> None:
    memo = memo_client.app.state.memo  # type: ignore[attr-defined]
    answers = [memo_client.get(f"/v1/users/2/recommendations?n={n}").json() for n in (1, 2, 3)]
    assert [len(a["items"]) for a in answers] == [1, 2, 3]
    assert len(memo._answers) == 2
    assert (memo.misses, memo.hits) == (3, 0)
    memo_client.get("/v1/users/2/recommendations?n=1")  # pushed out: computed again
    assert (memo.misses, memo.hits) == (4, 0)
    memo_client.get("/v1/users/2/recommendations?n=3")
    assert (memo.misses, memo.hits) == (4, 1)


def test_the_memo_is_on_by_default_and_counted_in_the_metrics(client: TestClient) -> None:
    first = client.get("/v1/users/2/recommendations").json()
    assert client.get("/v1/users/2/recommendations").json() == first
    memo = client.app.state.memo  # type: ignore[attr-defined]
    assert memo.size > 0 and (memo.misses, memo.hits) == (1, 1) and len(memo) == 1
    text_ = client.get("/metrics").text
    assert 'movierec_result_memo_lookups_total{result="hit"} 1.0' in text_
    assert 'movierec_result_memo_lookups_total{result="miss"} 1.0' in text_
    assert "movierec_result_memo_entries 1.0" in text_


def test_a_memo_of_size_zero_is_off(served: Any, tmp_path: Path) -> None:
    settings = app_settings(served.url, tmp_path, result_memo_size=0)
    with TestClient(create_app(settings)) as client:
        first = client.get("/v1/users/2/recommendations").json()
        assert client.get("/v1/users/2/recommendations").json() == first
        memo = client.app.state.memo  # type: ignore[attr-defined]
        assert (memo.misses, memo.hits, len(memo)) == (0, 0, 0)
