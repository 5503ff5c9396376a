"""The result memo is bounded in bytes, and what it counts is what its entries cost."""

from __future__ import annotations

import gc
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db.models import Movie, Rating, User
from app.main import create_app
from app.services.recommendations import (
    Filters,
    Item,
    Recommendations,
    memo_entry_bytes,
    memo_key,
    pack_ratings,
    unpack_ratings,
)
from app.serving import ResultMemo
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import app_settings
from tests.app.test_result_memo import state

HEAVY_USER = 7777
EXTRA_MOVIES = range(1001, 2653)  # with the 30 of the tiny catalogue: 1,682, as MovieLens-100K
QUERIES = 2048
BOUND = 8 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_packed_ratings_round_trip() -> None:
    rows = [(1, 4.5), (1682, 0.5), (2_147_483_647, 4.25)]
    assert unpack_ratings(pack_ratings(rows)) == dict(rows)
    assert pack_ratings([]) == b""
    assert len(pack_ratings(rows)) == 16 * len(rows)


def test_the_counted_bytes_cover_what_the_entries_take() -> None:
    """Entries built as the service builds them (1,682 ratings, up to 100 movies, excluded
    ids): the memo's count is at least what tracemalloc sees them allocate, and not far above."""
    rng = random.Random(3)
    titles = [f"Film {i}" for i in range(200)]
    genres = [["Drama"], ["Action", "Comedy"]]
    live = state(1)
    memo = ResultMemo(10_000, weigh=memo_entry_bytes)
    rows = [(m, rng.choice([1.0, 3.5, 5.0])) for m in range(1, 1683)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(300):
            exclude = tuple(1000 + j for j in range(i % 40))
            filters = Filters(genres=("Drama",) if i % 2 else (), exclude=exclude)
            n = 1 + i % 100
            items = [
                Item(
                    movie_id=int(5000 + j),
                    title=titles[j % 200],
                    year=int(1900 + j),
                    genres=genres[j % 2],
                    score=float(rng.random()),
                    predicted_rating=float(rng.random() * 5),
                )
                for j in range(n)
            ]
            key = memo_key(live, n, 10_000 - i, filters, pack_ratings(rows))
            memo.put(live, key, Recommendations(1, "model", items))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    taken = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(memo) == 300
    print(f"counted {memo.bytes} bytes, tracemalloc {taken}")
    assert taken <= memo.bytes <= 1.3 * taken


@pytest.fixture
def heavy_user(served: Any) -> Any:
    """A user who rated all 1,682 movies of a catalogue (the 30 of the model are left unrated,
    so that answers have movies in them)."""
    with Session(served.engine) as session, session.begin():
        session.add_all(
            Movie(id=m, title=f"Extra {m}", year=1990, genres="Drama") for m in EXTRA_MOVIES
        )
        session.add(User(id=HEAVY_USER))
        session.flush()
        session.add_all(Rating(user_id=HEAVY_USER, movie_id=m, rating=4.0) for m in EXTRA_MOVIES)
    return served


@pytest.mark.parametrize("database_session", ["sqlite"], indirect=True)
def test_heavy_distinct_queries_stay_within_the_byte_bound(heavy_user: Any, tmp_path: Path):
    settings = app_settings(heavy_user.url, tmp_path, result_memo_bytes=BOUND)
    app = create_app(settings)
    with TestClient(app) as client:
        url = f"/v1/users/{HEAVY_USER}/recommendations"
        for n in range(1, 60):  # warm-up: every code path and cache in place
            assert client.get(url, params={"n": n, "offset": 9000}).status_code == 200
        gc.collect()
        start = rss_bytes()
        for i in range(QUERIES):
            answer = client.get(url, params={"n": 1 + i % 100, "offset": i // 100})
            assert answer.status_code == 200
        gc.collect()
        grown = rss_bytes() - start
        memo: ResultMemo = app.state.memo
        print(f"{len(memo)} entries, {memo.bytes} bytes counted, RSS grew {grown >> 20} MiB")
        assert 0 < memo.bytes <= BOUND
        assert len(memo) < QUERIES  # the byte bound, not the entry bound, held it
        assert grown <= BOUND + (16 << 20)
        metrics = client.get("/metrics").text.splitlines()
        gauge = next(line for line in metrics if line.startswith("movierec_result_memo_bytes "))
        assert float(gauge.split()[1]) == memo.bytes


def test_a_zero_size_or_zero_bytes_memo_is_off(client: TestClient, served: Any, tmp_path: Path):
    for override in ({"result_memo_size": 0}, {"result_memo_bytes": 0}):
        app = create_app(app_settings(served.url, tmp_path, **override))
        with TestClient(app) as other:
            assert other.get("/v1/users/2/recommendations").status_code == 200
            assert len(app.state.memo) == 0 and app.state.memo.hits + app.state.memo.misses == 0
