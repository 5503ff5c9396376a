"""``/v1/users/{id}/recommendations``, ``POST /v1/recommendations`` and predictions."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import GROUP_A_MOVIES, NEW_USER, assert_problem, rating_rows


def rated_by(user_id: int) -> set[int]:
    return {m for u, m, _ in rating_rows() if u == user_id}


def ids(body: dict) -> list[int]:
    return [item["movie_id"] for item in body["items"]]


class TestUserRecommendations:
    def test_top_n_unseen_with_metadata_and_version(self, client: TestClient, served) -> None:
        r = client.get("/v1/users/2/recommendations", params={"n": 5})
        assert r.status_code == 200
        body = r.json()
        assert body["user_id"] == 2
        assert body["source"] == "model"
        assert body["model_version"] == served.version_id
        assert r.headers["x-model-version"] == str(served.version_id)
        assert len(body["items"]) == 5
        assert not set(ids(body)) & rated_by(2)
        first = body["items"][0]
        assert first["title"].startswith("Film ")
        assert isinstance(first["genres"], list) and first["genres"]
        assert 0.5 <= first["predicted_rating"] <= 5
        scores = [item["score"] for item in body["items"]]
        assert scores == sorted(scores, reverse=True)

    def test_never_returns_rated_movies_even_when_asking_for_all(self, client: TestClient) -> None:
        body = client.get("/v1/users/3/recommendations", params={"n": 100}).json()
        assert set(ids(body)) == set(range(1, 31)) - rated_by(3)

    def test_offset_pages_through_the_same_ranking(self, client: TestClient) -> None:
        full = ids(client.get("/v1/users/4/recommendations", params={"n": 6}).json())
        page = ids(client.get("/v1/users/4/recommendations", params={"n": 3, "offset": 3}).json())
        assert page == full[3:6]

    def test_filters_genres_years_and_exclusions(self, client: TestClient) -> None:
        body = client.get(
            "/v1/users/2/recommendations",
            params={"n": 100, "genres": "drama", "year_min": 2000, "year_max": 2005},
        ).json()
        assert ids(body)
        for item in body["items"]:
            assert "Drama" in item["genres"] and 2000 <= item["year"] <= 2005
        top = ids(client.get("/v1/users/2/recommendations", params={"n": 2}).json())
        excluded = client.get(
            "/v1/users/2/recommendations", params={"n": 5, "exclude": ",".join(map(str, top))}
        ).json()
        assert not set(top) & set(ids(excluded))

    def test_an_exclusion_does_not_stick_to_the_cached_filter(self, client: TestClient) -> None:
        drama = {"n": 3, "genres": "drama"}
        top = ids(client.get("/v1/users/2/recommendations", params=drama).json())
        params = {**drama, "exclude": str(top[0])}
        without = ids(client.get("/v1/users/2/recommendations", params=params).json())
        assert top[0] not in without and without[:2] == top[1:]
        assert ids(client.get("/v1/users/2/recommendations", params=drama).json()) == top

    def test_concurrent_requests_each_get_their_own_list(self, client: TestClient) -> None:
        import asyncio

        import httpx

        async def ask_all() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await asyncio.gather(
                    *(http.get(f"/v1/users/{u}/recommendations?n=4") for u in (2, 3, 4, 2))
                )

        answers = asyncio.run(ask_all())
        for user, r in zip((2, 3, 4, 2), answers, strict=True):
            assert r.status_code == 200
            assert ids(r.json()) == ids(client.get(f"/v1/users/{user}/recommendations?n=4").json())
            assert not set(ids(r.json())) & rated_by(user)

    def test_any_of_several_genres_and_an_unknown_genre_is_422(self, client: TestClient) -> None:
        both = client.get(
            "/v1/users/2/recommendations", params={"n": 100, "genres": "Comedy,Drama"}
        ).json()
        assert set(ids(both)) == set(range(1, 31)) - rated_by(2)
        unknown = client.get("/v1/users/2/recommendations", params={"genres": "Western"})
        body = assert_problem(unknown, 422, "Western", "Action, Comedy, Drama")
        assert body["known"] == ["Action", "Comedy", "Drama"]

    def test_user_without_ratings_gets_popular_films(self, client: TestClient) -> None:
        body = client.get(f"/v1/users/{NEW_USER}/recommendations", params={"n": 4}).json()
        assert body["source"] == "popular"
        assert len(body["items"]) == 4
        counts = [item["score"] for item in body["items"]]
        assert counts == sorted(counts, reverse=True)

    def test_unknown_user_is_404(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/users/123456/recommendations"), 404, "user 123456")

    def test_bad_parameters_are_422_naming_the_field(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/users/2/recommendations?n=0"), 422, "n")
        assert_problem(client.get("/v1/users/2/recommendations?n=101"), 422, "n")
        assert_problem(client.get("/v1/users/2/recommendations?exclude=1,x"), 422, "exclude")
        assert_problem(client.get("/v1/users/abc/recommendations"), 422, "user_id")

    def test_a_rating_write_changes_the_next_answer(self, client: TestClient) -> None:
        before = ids(client.get("/v1/users/2/recommendations", params={"n": 3}).json())
        top = before[0]
        put = client.put(f"/v1/users/2/ratings/{top}", json={"rating": 1.0})
        assert put.status_code in (200, 201)
        after = ids(client.get("/v1/users/2/recommendations", params={"n": 3}).json())
        assert top not in after
        assert after != before

    def test_without_a_model_is_503_saying_how_to_get_one(self, bare_client: TestClient) -> None:
        r = bare_client.get("/v1/users/2/recommendations")
        assert_problem(r, 503, "movierec train")
        assert r.headers["retry-after"]
        assert bare_client.get("/v1/movies/1").status_code == 200
        assert bare_client.get("/v1/users/2/ratings").status_code == 200


class TestVisitorRecommendations:
    def test_folds_in_ratings_without_storing_them(self, client: TestClient) -> None:
        ratings = [{"movie_id": m, "rating": 5.0} for m in (1, 2, 3, 4)]
        r = client.post("/v1/recommendations", json={"ratings": ratings, "n": 5})
        assert r.status_code == 200
        body = r.json()
        assert body["user_id"] is None and body["source"] == "model"
        assert len(body["items"]) == 5
        assert not set(ids(body)) & {1, 2, 3, 4}
        # A taste for group A movies ranks group A first.
        assert sum(m in GROUP_A_MOVIES for m in ids(body)) >= 3
        total = client.get("/v1/movies").json()["total"]
        assert total == 30  # nothing was created
        assert client.get("/v1/users/0/ratings").status_code == 404

    def test_filters_apply(self, client: TestClient) -> None:
        r = client.post(
            "/v1/recommendations",
            json={
                "ratings": [{"movie_id": 1, "rating": 4}],
                "genres": ["Drama"],
                "n": 100,
                "exclude": [16, 17],
            },
        )
        body = r.json()
        assert body["items"] and all("Drama" in i["genres"] for i in body["items"])
        assert not {16, 17} & set(ids(body))

    def test_no_ratings_gives_popular(self, client: TestClient) -> None:
        body = client.post("/v1/recommendations", json={"n": 3}).json()
        assert body["source"] == "popular" and len(body["items"]) == 3

    def test_unknown_movies_are_404_listing_them(self, client: TestClient) -> None:
        r = client.post(
            "/v1/recommendations",
            json={
                "ratings": [
                    {"movie_id": 1, "rating": 4},
                    {"movie_id": 777, "rating": 3},
                    {"movie_id": 888, "rating": 3},
                ]
            },
        )
        body = assert_problem(r, 404, "777", "888")
        assert body["movie_ids"] == [777, 888]

    def test_rating_out_of_range_is_422(self, client: TestClient) -> None:
        for bad in (0.0, 5.5, -1, 4.25, 0.7):  # the import refuses the same (app.rating_scale)
            r = client.post(
                "/v1/recommendations", json={"ratings": [{"movie_id": 1, "rating": bad}]}
            )
            assert_problem(r, 422, "rating")

    def test_malformed_json_is_422_problem(self, client: TestClient) -> None:
        r = client.post(
            "/v1/recommendations",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_problem(r, 422)


class TestPredictions:
    def test_predictions_in_requested_order(self, client: TestClient, served) -> None:
        r = client.get("/v1/users/2/predictions", params={"movie_ids": "16,1,3"})
        assert r.status_code == 200
        body = r.json()
        assert body["model_version"] == served.version_id
        assert [i["movie_id"] for i in body["items"]] == [16, 1, 3]
        assert all(0.5 <= i["predicted_rating"] <= 5 for i in body["items"])

    def test_errors(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/users/2/predictions?movie_ids=1,999"), 404, "999")
        assert_problem(client.get("/v1/users/2/predictions?movie_ids=a"), 422, "movie_ids")
        assert_problem(client.get("/v1/users/2/predictions"), 422, "movie_ids")
        assert_problem(client.get("/v1/users/5555/predictions?movie_ids=1"), 404, "5555")
