"""Micro-batching: concurrent recommendation requests share one forward pass, same answers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.serving import MicroBatcher, rank_batch
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures

USERS = [{1: 5.0, 2: 4.0}, {16: 5.0, 17: 4.5, 18: 1.0}, {3: 1.0, 20: 4.5}, {}]


@pytest.fixture(scope="module")
def recommender(tiny_model):
    from ml.inference import Recommender

    return Recommender.from_checkpoint(tiny_model.path, device="cpu")


def test_concurrent_requests_are_scored_in_one_pass_like_one_by_one(recommender) -> None:
    allowed = np.ones(len(recommender.movie_ids), dtype=bool)
    batcher = MicroBatcher()

    async def ask_all():
        return await asyncio.gather(*(batcher.top(recommender, u, 6, allowed) for u in USERS))

    results = asyncio.run(ask_all())
    assert (batcher.batches, batcher.requests) == (1, len(USERS))
    for ratings, got in zip(USERS, results, strict=True):
        expected = recommender.recommend(ratings, n=6, allowed=allowed)
        assert [r.movie_id for r in got] == [e.movie_id for e in expected]
        assert [r.score for r in got] == pytest.approx([e.score for e in expected], rel=1e-5)
        assert [r.predicted_rating for r in got] == pytest.approx(
            [e.predicted_rating for e in expected], rel=1e-5
        )
        assert not set(ratings) & {r.movie_id for r in got}


def test_masks_rated_and_unknown_movies(recommender) -> None:
    allowed = np.isin(recommender.movie_ids, [4, 5, 6, 1])
    [ranked] = rank_batch(recommender, [({1: 5.0, 999: 3.0}, 10, allowed)])
    assert sorted(r.movie_id for r in ranked) == [4, 5, 6]
    [nothing] = rank_batch(recommender, [({1: 5.0}, 10, np.zeros_like(allowed))])
    assert nothing == []


def test_a_failing_batch_fails_each_request(recommender) -> None:
    batcher = MicroBatcher()
    wrong_shape = np.ones(3, dtype=bool)

    async def ask():
        return await batcher.top(recommender, {1: 4.0}, 5, wrong_shape)

    with pytest.raises(ValueError):
        asyncio.run(ask())
