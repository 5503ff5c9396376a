"""``/v1/movies``: search, one movie, similar movies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.ingest.formats import custom_csv
from app.ingest.importer import import_dataset
from app.main import create_app
from tests.app.ingest_fixtures import write_csv
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import app_settings, assert_problem


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
        assert client.get("/v1/movies", params={"genre": " Drama "}).json()["total"] == 15
        both = client.get("/v1/movies", params={"genre": "Comedy", "q": "film 1"}).json()
        assert {m["movie_id"] for m in both["items"]} == {10, 11, 12, 13, 14, 15}

    def test_an_unknown_genre_is_422_listing_the_known_ones(self, client: TestClient) -> None:
        body = assert_problem(client.get("/v1/movies", params={"genre": "Dram"}), 422, "'Dram'")
        assert "Action, Comedy, Drama" in body["detail"]
        assert_problem(client.get("/v1/movies", params={"genre": "Drama,Comedy"}), 422, "one")
        assert_problem(client.get("/v1/movies", params={"genre": "Drama,"}), 422, "genre")
        # The document says the same: a pattern of the catalogue's genres.
        document = client.get("/openapi.json").json()
        (schema,) = [
            p["schema"] for p in document["paths"]["/v1/movies"]["get"]["parameters"]
            if p["name"] == "genre"
        ]  # fmt: skip
        assert re.search(schema["pattern"], "drama")
        assert not re.search(schema["pattern"], "Dram")
        assert not re.search(schema["pattern"], "Drama,Comedy")

    def test_without_a_model_the_genre_is_taken_as_given(self, bare_client: TestClient) -> None:
        # No serving catalogue to check against: the search itself finds nothing.
        assert bare_client.get("/v1/movies", params={"genre": "Dram"}).json()["total"] == 0
        assert bare_client.get("/v1/movies", params={"genre": "drama"}).json()["total"] == 15

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


# Titles as MovieLens stores them, imported through `movierec data import --ratings --movies`.
SEARCH_MOVIES = [
    '1,"Godfather, The (1972)",Crime|Drama',
    '2,"Godfather: Part II, The (1974)",Crime|Drama',
    '3,"Empire Strikes Back, The (1980)",Action|Sci-Fi',
    "4,Empire Records (1995),Comedy",
    "5,Empire of the Sun (1987),Drama|War",
    "6,Empire (2002),Crime",
    '7,"Fall of the Roman Empire, The (1964)",Drama',
    "8,Amélie (2001),Comedy|Romance",
    '9,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure',
    "10,Die Hard (1988),Action",
]
# Ratings per movie (the popularity): the substring match 7 is the most rated of all.
SEARCH_POPULARITY = {1: 1, 2: 4, 3: 2, 4: 3, 5: 1, 6: 0, 7: 5, 8: 1, 9: 1, 10: 1}


@pytest.fixture
def search_client(env: Any, tmp_path: Path) -> Iterator[TestClient]:
    """An app on a store filled by the importer with ``SEARCH_MOVIES`` and their ratings."""
    lines = [
        f"{user},{movie},4,{1_000_000 + user}"
        for movie, count in SEARCH_POPULARITY.items()
        for user in range(1, count + 1)
    ]
    ratings = write_csv(tmp_path / "ratings.csv", "user_id,movie_id,rating,timestamp", lines)
    movies = write_csv(tmp_path / "movies.csv", "movie_id,title,genres", SEARCH_MOVIES)
    import_dataset(env.url, custom_csv(ratings, movies), progress=False)
    with TestClient(create_app(app_settings(env.url, tmp_path))) as test_client:
        yield test_client


def found(client: TestClient, q: str, **params: Any) -> list[int]:
    response = client.get("/v1/movies", params={"q": q, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] >= len(body["items"])
    return [m["movie_id"] for m in body["items"]]


class TestSearchAsPeopleType:
    """Case, accents, punctuation and articles ignored; exact, then prefix, then substring
    matches, each by popularity; the same on SQLite and PostgreSQL."""

    def test_articles_and_case_are_ignored(self, search_client: TestClient) -> None:
        for q in ("the godfather", "The Godfather", "GODFATHER", "Godfather, The", "godfather"):
            assert found(search_client, q) == [1, 2], q  # exact before prefix, though less rated
        assert found(search_client, "the godfather part ii") == [2]
        assert found(search_client, "godfather part") == [2]

    def test_exact_then_prefix_then_substring_each_by_popularity(
        self, search_client: TestClient
    ) -> None:
        # "empire": 6 is equal (no ratings), 4, 3 and 5 start with it (3, 2 and 1 ratings),
        # 7 only contains it (5 ratings).
        for q in ("The Empire", "empire", "EMPIRE"):
            assert found(search_client, q) == [6, 4, 3, 5, 7], q
        assert found(search_client, "The Empire", limit=2, offset=1) == [4, 3]
        assert search_client.get("/v1/movies", params={"q": "the empire"}).json()["total"] == 5
        assert found(search_client, "The Empire Strikes") == [3]
        assert found(search_client, "roman empire") == [7]

    def test_accents_and_punctuation_are_ignored(self, search_client: TestClient) -> None:
        assert found(search_client, "amelie") == [8]
        assert found(search_client, "AMÉLIE") == [8]
        assert found(search_client, "cite des enfants") == [9]
        assert found(search_client, "city of lost children") == [9]
        assert found(search_client, "Cité des enfants perdus, La") == [9]

    def test_only_english_leading_articles_are_dropped(self, search_client: TestClient) -> None:
        assert found(search_client, "die") == [10]
        assert found(search_client, "die hard") == [10]
        # "the" alone is no article: found inside titles ("godfather" too), the most rated first.
        assert found(search_client, "the") == [7, 2, 1, 5]

    def test_genre_filter_combines_with_the_ranking(self, search_client: TestClient) -> None:
        assert found(search_client, "the empire", genre="drama") == [5, 7]
        assert found(search_client, "godfather", genre="comedy") == []

    def test_rating_writes_move_popularity(self, search_client: TestClient) -> None:
        for user in (500, 501, 502):
            r = search_client.put(f"/v1/users/{user}/ratings/5", json={"rating": 4})
            assert r.status_code in (200, 201), r.text
        search_client.put("/v1/users/500/ratings/5", json={"rating": 3})  # an update: no change
        assert found(search_client, "empire") == [6, 5, 4, 3, 7]  # 5 now has 4 ratings
        for user in (500, 501):
            assert search_client.delete(f"/v1/users/{user}/ratings/5").status_code == 204
        assert found(search_client, "empire") == [6, 4, 3, 5, 7]  # 2 ratings: ties with 3
