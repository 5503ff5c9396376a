"""``/v1/movies``: search, one movie, similar movies."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import assert_problem


class TestSearch:
    def test_pages_with_total_ordered_by_id(self, client: TestClient) -> None:
        first = client.get("/v1/movies", params={"limit": 7}).json()
        second = client.get("/v1/movies", params={"limit": 7, "offset": 7}).json()
        assert first["total"] == second["total"] == 30
        assert [m["movie_id"] for m in first["items"]] == list(range(1, 8))
        assert [m["movie_id"] for m in second["items"]] == list(range(8, 15))
        assert first["items"][0] == {
            "movie_id": 1,
            "title": "Film 01",
            "year": 1981,
            "genres": ["Action", "Comedy"],
        }

    def test_title_search_ignores_case(self, client: TestClient) -> None:
        body = client.get("/v1/movies", params={"q": "fILM 2"}).json()
        assert body["total"] == 10  # Film 20..29
        assert all(m["title"].startswith("Film 2") for m in body["items"])

    def test_like_wildcards_in_the_query_are_literal(self, client: TestClient) -> None:
        assert client.get("/v1/movies", params={"q": "%"}).json()["total"] == 0
        assert client.get("/v1/movies", params={"q": "_"}).json()["total"] == 0

    def test_genre_filter_is_exact_and_combines_with_search(self, client: TestClient) -> None:
        assert client.get("/v1/movies", params={"genre": "drama"}).json()["total"] == 15
        assert client.get("/v1/movies", params={"genre": "Dram"}).json()["total"] == 0
        both = client.get("/v1/movies", params={"genre": "Comedy", "q": "film 1"}).json()
        assert {m["movie_id"] for m in both["items"]} == {10, 11, 12, 13, 14, 15}

    def test_bad_paging_is_422(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/movies?limit=0"), 422, "limit")
        assert_problem(client.get("/v1/movies?offset=-1"), 422, "offset")


class TestOneMovie:
    def test_found_and_not_found(self, client: TestClient) -> None:
        assert client.get("/v1/movies/16").json()["genres"] == ["Drama"]
        assert_problem(client.get("/v1/movies/404"), 404, "movie 404")
        assert_problem(client.get("/v1/movies/x"), 422, "movie_id")


class TestSimilar:
    def test_similar_movies_from_the_model(self, client: TestClient, served) -> None:
        body = client.get("/v1/movies/3/similar", params={"n": 4}).json()
        assert body["movie_id"] == 3 and body["model_version"] == served.version_id
        assert len(body["items"]) == 4
        assert 3 not in [i["movie_id"] for i in body["items"]]
        assert all(i["predicted_rating"] is None for i in body["items"])

    def test_errors(self, client: TestClient, bare_client: TestClient) -> None:
        assert_problem(client.get("/v1/movies/404/similar"), 404, "movie 404")
        assert_problem(client.get("/v1/movies/3/similar?n=0"), 422, "n")
