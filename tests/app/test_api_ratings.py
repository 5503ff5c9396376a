"""``/v1/users/{id}/ratings``: list, put, delete."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import NEW_USER, assert_problem, rating_rows


def test_list_is_paginated_with_total(client: TestClient) -> None:
    first = client.get("/v1/users/2/ratings", params={"limit": 5}).json()
    rest = client.get("/v1/users/2/ratings", params={"limit": 50, "offset": 5}).json()
    assert first["total"] == rest["total"] == 12
    seen = [r["movie_id"] for r in first["items"] + rest["items"]]
    assert sorted(seen) == sorted(m for u, m, _ in rating_rows() if u == 2)
    assert client.get(f"/v1/users/{NEW_USER}/ratings").json()["total"] == 0
    assert_problem(client.get("/v1/users/31337/ratings"), 404, "user 31337")


def test_ratings_name_their_movies(client: TestClient) -> None:
    items = client.get("/v1/users/2/ratings").json()["items"]
    for item in items:
        movie = client.get(f"/v1/movies/{item['movie_id']}").json()
        assert (item["title"], item["year"], item["genres"]) == (
            movie["title"],
            movie["year"],
            movie["genres"],
        )
    put = client.put("/v1/users/500/ratings/7", json={"rating": 3.5}).json()
    assert put["title"] == client.get("/v1/movies/7").json()["title"]


def test_put_creates_then_replaces_and_creates_new_users(client: TestClient) -> None:
    created = client.put("/v1/users/500/ratings/7", json={"rating": 3.5})
    assert created.status_code == 201
    assert created.json()["rating"] == 3.5 and created.json()["user_id"] == 500
    replaced = client.put("/v1/users/500/ratings/7", json={"rating": 4})
    assert replaced.status_code == 200 and replaced.json()["rating"] == 4.0
    listed = client.get("/v1/users/500/ratings").json()
    assert listed["total"] == 1 and listed["items"][0]["rating"] == 4.0
    # The new user now gets model recommendations built from that rating.
    recs = client.get("/v1/users/500/recommendations").json()
    assert recs["source"] == "model" and 7 not in [i["movie_id"] for i in recs["items"]]


def test_put_refuses_bad_ratings_and_unknown_movies(client: TestClient) -> None:
    for bad in (0, 0.25, 5.5, 3.3, "abc"):
        assert_problem(client.put("/v1/users/2/ratings/1", json={"rating": bad}), 422, "rating")
    assert_problem(client.put("/v1/users/2/ratings/1", json={}), 422, "rating")
    assert_problem(client.put("/v1/users/2/ratings/4040", json={"rating": 3}), 404, "4040")
    assert client.get("/v1/users/2/ratings").json()["total"] == 12


def test_delete(client: TestClient) -> None:
    movie = next(m for u, m, _ in rating_rows() if u == 2)
    assert client.delete(f"/v1/users/2/ratings/{movie}").status_code == 204
    assert client.get("/v1/users/2/ratings").json()["total"] == 11
    assert_problem(client.delete(f"/v1/users/2/ratings/{movie}"), 404, f"movie {movie}")


def test_rating_routes_work_without_a_model(bare_client: TestClient) -> None:
    assert bare_client.put("/v1/users/2/ratings/1", json={"rating": 5}).status_code in (200, 201)
    assert bare_client.get("/v1/movies", params={"q": "film"}).json()["total"] == 30
