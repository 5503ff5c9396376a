"""Baselines on tiny matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ml.baselines import EASE, BiasBaseline, Popularity


def test_bias_baseline_recovers_planted_biases() -> None:
    rng = np.random.default_rng(0)
    b_u = rng.normal(0, 0.5, 12)
    b_i = rng.normal(0, 0.5, 9)
    b_u -= b_u.mean()
    b_i -= b_i.mean()
    full = 3.5 + b_u[:, None] + b_i[None, :]  # every rating observed, no noise
    model = BiasBaseline(user_reg=0.0, item_reg=0.0, iterations=20).fit(sp.csr_matrix(full))
    assert model.global_mean == pytest.approx(3.5)
    np.testing.assert_allclose(model.user_bias, b_u, atol=1e-6)
    np.testing.assert_allclose(model.item_bias, b_i, atol=1e-6)
    rows, cols = np.nonzero(full)
    np.testing.assert_allclose(model.predict(rows, cols), full[rows, cols], atol=1e-6)


def test_bias_baseline_shrinks_and_falls_back() -> None:
    m = sp.csr_matrix(np.array([[5.0, 0, 0], [1.0, 3.0, 0]]))
    model = BiasBaseline(user_reg=1.0, item_reg=1.0).fit(m)
    # unseen user (row 7) and unrated movie (column 2): biases 0 → global mean (3.0)
    assert model.predict(np.array([7]), np.array([2]))[0] == pytest.approx(3.0)
    assert model.predict(np.array([7]), np.array([0]))[0] == pytest.approx(3.0 + model.item_bias[0])
    assert abs(model.user_bias[0]) < 2.0  # shrunk: one 5-star rating is not a +2 user
    # a row folded in from its ratings gets the same bias as the fitted user
    assert model.fold_in(m[1])[0] == pytest.approx(model.user_bias[1], abs=0.05)
    scores = model.score(m)
    assert scores.shape == (2, 3) and scores.min() >= 1.0 and scores.max() <= 5.0


def test_popularity_counts_raters() -> None:
    m = sp.csr_matrix(np.array([[5.0, 1.0, 0], [4.0, 0, 0], [2.0, 0, 0]]))
    scores = Popularity().fit(m).score(m[:2])
    assert scores.tolist() == [[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]]


def test_ease_matches_closed_form_with_zero_diagonal() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((30, 8)) < 0.4).astype(float)
    model = EASE(lam=2.0).fit(sp.csr_matrix(x * 4.0))  # ratings are binarised
    assert np.all(np.diag(model.weights) == 0.0)
    # Column j solves min ‖x_j − X_{-j} b‖² + λ‖b‖² over the other movies.
    for j in range(8):
        others = [k for k in range(8) if k != j]
        a = x[:, others]
        b = np.linalg.solve(a.T @ a + 2.0 * np.eye(7), a.T @ x[:, j])
        np.testing.assert_allclose(model.weights[others, j], b, atol=1e-8)
    np.testing.assert_allclose(model.score(sp.csr_matrix(x[:3])), x[:3] @ model.weights)


def test_ease_lambda_is_tuned_on_a_slice_of_training() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat([0, 1], 30)
    liked = rng.random((60, 20)) < 0.6
    liked &= (np.arange(20)[None, :] < 10) == (groups[:, None] == 0)
    m = sp.csr_matrix(liked * 5.0)
    model, tried = EASE.tuned(m, lambdas=(1.0, 10.0, 100.0), seed=0)
    assert set(tried) == {1.0, 10.0, 100.0}
    assert model.lam == max(tried, key=lambda k: tried[k])
    assert model.weights.shape == (20, 20)


def test_empty_matrix_is_refused() -> None:
    with pytest.raises(ValueError, match="no ratings"):
        BiasBaseline().fit(sp.csr_matrix((2, 2)))
    with pytest.raises(TypeError):
        EASE().fit(np.ones((2, 2)))
