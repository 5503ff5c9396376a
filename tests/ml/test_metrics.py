"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from ml import metrics

# User 0: ranking 0 > 1 > 2 > 3, relevant {1, 3}. User 1: nothing relevant (skipped).
SCORES = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
RELEVANT = np.array([[False, True, False, True], [False, False, False, False]])
LOG3 = math.log2(3)


def test_ndcg_by_hand() -> None:
    # top-2 = [0, 1] → hit at rank 2 only: DCG = 1/log2(3); ideal = 1 + 1/log2(3).
    got = metrics.ndcg_at_k(SCORES, RELEVANT, 2)
    assert got[0] == pytest.approx((1 / LOG3) / (1 + 1 / LOG3))
    assert math.isnan(got[1])
    # top-4 holds both: DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3).
    assert metrics.ndcg_at_k(SCORES, RELEVANT, 4)[0] == pytest.approx(
        (1 / LOG3 + 1 / math.log2(5)) / (1 + 1 / LOG3)
    )


def test_recall_precision_map_by_hand() -> None:
    assert metrics.recall_at_k(SCORES, RELEVANT, 2)[0] == pytest.approx(1 / 2)
    assert metrics.recall_at_k(SCORES, RELEVANT, 1)[0] == 0.0
    # denominator min(k, #relevant): one relevant movie found in the top 1 → recall 1
    assert metrics.recall_at_k(np.array([[1.0, 0.0]]), np.array([[True, True]]), 1)[0] == 1.0
    assert metrics.precision_at_k(SCORES, RELEVANT, 2)[0] == pytest.approx(1 / 2)
    assert metrics.precision_at_k(SCORES, RELEVANT, 4)[0] == pytest.approx(2 / 4)
    # AP@4: hits at ranks 2 and 4 → (1/2 + 2/4) / min(4, 2) = 0.5
    assert metrics.map_at_k(SCORES, RELEVANT, 4)[0] == pytest.approx(0.5)
    # AP@2: (1/2) / 2 = 0.25
    assert metrics.map_at_k(SCORES, RELEVANT, 2)[0] == pytest.approx(0.25)
    for fn in (metrics.recall_at_k, metrics.precision_at_k, metrics.map_at_k):
        assert math.isnan(fn(SCORES, RELEVANT, 2)[1])


def test_perfect_ranking_scores_one() -> None:
    scores = np.array([[0.1, 0.9, 0.2, 0.8]])
    for fn in (metrics.ndcg_at_k, metrics.recall_at_k, metrics.map_at_k):
        assert fn(scores, RELEVANT[:1], 2)[0] == pytest.approx(1.0)


def test_seen_movies_are_masked_and_ties_break_by_index() -> None:
    seen = sp.csr_matrix(np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
    masked = metrics.mask_seen(SCORES, seen)
    assert masked[0, 0] == -np.inf and masked[1, 0] == 0.1
    assert metrics.top_k(masked, 2)[0].tolist() == [1, 2]
    assert metrics.top_k(np.zeros((1, 4)), 3)[0].tolist() == [0, 1, 2]
    # with movie 0 masked, user 0's top 2 = [1, 2]: NDCG = 1 / (1 + 1/log2(3))
    assert metrics.ndcg_at_k(masked, RELEVANT, 2)[0] == pytest.approx(1 / (1 + 1 / LOG3))


def test_relevance_threshold_is_four() -> None:
    held = sp.csr_matrix(np.array([[3.5, 4.0, 0.0, 5.0]]))
    assert metrics.relevance(held).tolist() == [[False, True, False, True]]


def test_coverage_rmse_mae_by_hand() -> None:
    assert metrics.coverage(np.array([[0, 1], [2, 1]]), 4) == 0.75
    assert metrics.rmse(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(math.sqrt(2.5))
    assert metrics.mae(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.5)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.ndcg_at_k(SCORES, RELEVANT[:, :3], 2)
    with pytest.raises(ValueError, match="predictions"):
        metrics.rmse(np.array([1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="k must be positive"):
        metrics.top_k(SCORES, 0)
