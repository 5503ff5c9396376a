"""Strict input at the edge: types and filters.

- In bodies a boolean is not a number and an integer is a number without a fraction (``3`` or
  ``3.0``, as JSON Schema reads ``integer``); a path or query integer is written canonically
  (``1.0``, `` 1``, ``+1``, ``01`` are 422, not user 1).
- Filters: a repeated parameter means the same as a comma list; an unknown genre is a 422 that
  lists the known ones; ``year_min`` after ``year_max`` is a 422 — on both recommendation routes,
  the hot route included.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import assert_problem

RECS = "/v1/users/2/recommendations"


def ids(body: dict[str, Any]) -> list[int]:
    return [item["movie_id"] for item in body["items"]]


@pytest.mark.parametrize(
    "payload",
    [{"rating": True}, {"rating": False}, {"rating": "4"}, {"rating": [4]}, {"rating": None}],
)
def test_a_rating_must_be_a_number(client: TestClient, payload: dict[str, Any]) -> None:
    assert_problem(client.put("/v1/users/2/ratings/1", json=payload), 422, "rating")
    assert client.put("/v1/users/2/ratings/1", json={"rating": 4}).json()["rating"] == 4.0


@pytest.mark.parametrize("path_id", ["1.0", "%201", "1%20", "+1", "01", "1e0", "0x1"])
def test_a_path_id_is_a_canonical_integer(client: TestClient, path_id: str) -> None:
    assert_problem(client.get(f"/v1/users/{path_id}/ratings"), 422, "user_id")
    assert_problem(client.put(f"/v1/users/2/ratings/{path_id}", json={"rating": 4}), 422)
    assert_problem(client.get(f"/v1/movies/{path_id}"), 422, "movie_id")
    assert_problem(client.get(f"/v1/users/{path_id}/recommendations"), 422, "user_id")
    assert client.get("/v1/users/2/ratings").json()["total"] == 12  # nothing written


def test_query_integers_are_canonical_too(client: TestClient) -> None:
    for bad in ("05", "5.0", "%205", "true"):
        assert_problem(client.get(f"{RECS}?n={bad}"), 422, "n")
    assert client.get(f"{RECS}?n=5").status_code == 200


def test_visitor_bodies_are_strict(client: TestClient) -> None:
    base = {"ratings": [{"movie_id": 1, "rating": 5}]}
    for bad in (
        {"ratings": [{"movie_id": 1, "rating": True}]},
        {"ratings": [{"movie_id": 1.5, "rating": 5}]},
        {"ratings": [{"movie_id": "1", "rating": 5}]},
        {"ratings": [{"movie_id": True, "rating": 5}]},
        {**base, "exclude": [False]},
        {**base, "exclude": ["3"]},
        {**base, "n": 5.5},
        {**base, "n": True},
    ):
        assert_problem(client.post("/v1/recommendations", json=bad), 422)
    assert client.post("/v1/recommendations", json={**base, "exclude": [3]}).status_code == 200
    # JSON Schema's integer: a number without a fraction, 3.0 included.
    assert client.post("/v1/recommendations", json={**base, "n": 3.0}).status_code == 200


def test_a_repeated_filter_means_the_comma_list(client: TestClient) -> None:
    comma = client.get(f"{RECS}?n=100&genres=Comedy,Drama&exclude=3,5")
    repeated = client.get(f"{RECS}?n=100&genres=Comedy&genres=Drama&exclude=3&exclude=5")
    mixed = client.get(f"{RECS}?n=100&genres=comedy&genres=Drama&exclude=3,5&exclude=5")
    assert comma.status_code == repeated.status_code == mixed.status_code == 200
    assert ids(comma.json()) == ids(repeated.json()) == ids(mixed.json())
    assert not {3, 5} & set(ids(comma.json()))
    one = ids(client.get(f"{RECS}?n=100&genres=Drama").json())
    assert set(one) < set(ids(comma.json()))


def test_an_unknown_genre_is_422_listing_the_known_ones(client: TestClient) -> None:
    for url in (f"{RECS}?genres=Horror", f"{RECS}?genres=Drama&genres=Horror"):
        body = assert_problem(client.get(url), 422, "'Horror'", "Action, Comedy, Drama")
        assert body["known"] == ["Action", "Comedy", "Drama"]
    visitor = {"ratings": [{"movie_id": 1, "rating": 5}], "genres": ["Drama", "Horror"]}
    body = assert_problem(client.post("/v1/recommendations", json=visitor), 422, "'Horror'")
    assert body["known"] == ["Action", "Comedy", "Drama"]
    assert_problem(client.get(f"{RECS}?genres=Drama,,Comedy"), 422, "genres")


def test_year_min_after_year_max_is_422(client: TestClient) -> None:
    assert_problem(client.get(f"{RECS}?year_min=2000&year_max=1990"), 422, "year_min")
    visitor = {"ratings": [{"movie_id": 1, "rating": 5}], "year_min": 2000, "year_max": 1990}
    assert_problem(client.post("/v1/recommendations", json=visitor), 422, "year_min")
    assert client.get(f"{RECS}?year_min=1990&year_max=1990").status_code == 200


def test_the_schema_states_the_catalogues_genres(client: TestClient) -> None:
    import re

    document = client.get("/openapi.json").json()
    params = document["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
    genres = next(p for p in params if p["name"] == "genres")["schema"]
    # A query parameter is absent or has a value: no null branch beside the array.
    assert genres["type"] == "array" and "anyOf" not in genres
    pattern = genres["items"]["pattern"]
    for accepted in ("Drama", "drama", " Comedy , ACTION", "Drama,Drama"):
        assert re.search(pattern, accepted), accepted
    for refused in ("Horror", "", "Drama,", "Drama,,Comedy", "Dramas"):
        assert not re.search(pattern, refused), refused
    visitor = document["components"]["schemas"]["VisitorRequest"]["properties"]["genres"]
    assert visitor["items"]["pattern"] == pattern


def test_no_query_or_path_parameter_is_nullable(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                options = schema.get("anyOf", [schema])
                assert all(o.get("type") != "null" for o in options), (path, parameter["name"])


def test_the_schema_states_the_bounds_of_every_integer(client: TestClient) -> None:
    """Bounds as JSON Schema keywords (minimum, maximum), never lost beside a validator."""
    document = client.get("/openapi.json").json()
    seen = 0
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                for option in schema.get("anyOf", [schema]):
                    if option.get("type") == "integer":
                        assert "ge" not in option and "le" not in option, parameter
                        assert "minimum" in option and "maximum" in option, parameter
                        seen += 1
    assert seen >= 15
    text = str(document["components"]["schemas"])
    assert "'ge'" not in text and "'le'" not in text


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    refused = client.post("/v1/users/2/ratings/1")
    assert_problem(refused, 405, "POST")
    assert refused.headers["allow"] == "DELETE, PUT"
