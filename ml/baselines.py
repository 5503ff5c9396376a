"""Reference models the autoencoder is measured against.

Each baseline has ``fit(train_csr)`` and ``score(rows_csr) -> (B, I)`` dense ranking scores
(higher is better) for users given by their training rows; the rating model ``BiasBaseline``
also has ``predict(users, items)`` for (row, column) pairs of the matrix it was fitted on. Rows
passed to ``score`` may be users never seen in ``fit``: every baseline folds a row in from its
ratings alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ml.model import ease_weights, tune_ease_lambda, user_offset


def _csr(m: sp.spmatrix) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise TypeError("expected a scipy.sparse matrix of ratings")
    out = sp.csr_matrix(m, dtype=np.float64)
    if out.nnz == 0:
        raise ValueError("the matrix has no ratings")
    return out


def _lookup(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` with 0 for indices outside ``values``."""
    known = (index >= 0) & (index < values.size)
    out = np.zeros(index.shape, dtype=np.float64)
    out[known] = values[index[known]]
    return out


@dataclass
class BiasBaseline:
    """r̂_ui = μ + b_u + b_i, regularised biases found by alternating closed-form steps:
    b_u = Σ_i (r_ui − μ − b_i) / (n_u + λ_user), then b_i = Σ_u (r_ui − μ − b_u) / (n_i + λ_item).
    Predictions are clipped to the rating range seen in training. An unseen user gets b_u = 0 and
    an unseen movie b_i = 0, so the global mean is the last fallback."""

    user_reg: float = 3.0  # λ_user: pseudo-ratings pulling a user's bias toward 0 (validated)
    item_reg: float = 5.0  # λ_item: pseudo-ratings pulling a movie's bias toward 0 (validated)
    iterations: int = 10  # alternating steps (converges in a handful)
    global_mean: float = 0.0
    user_bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    item_bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rating_range: tuple[float, float] = (1.0, 5.0)

    def fit(self, train: sp.spmatrix) -> BiasBaseline:
        """Learn μ, b_u, b_i from the observed ratings of ``train``."""
        m = _csr(train)
        coo = m.tocoo()
        n_users, n_items = m.shape
        self.global_mean = float(coo.data.mean())
        self.rating_range = (float(coo.data.min()), float(coo.data.max()))
        n_u = np.bincount(coo.row, minlength=n_users)
        n_i = np.bincount(coo.col, minlength=n_items)
        resid = coo.data - self.global_mean  # (nnz,)
        b_u, b_i = np.zeros(n_users), np.zeros(n_items)
        for _ in range(self.iterations):
            sums = np.bincount(coo.row, resid - b_i[coo.col], minlength=n_users)
            b_u = user_offset(sums, n_u, self.user_reg)
            b_i = np.bincount(coo.col, resid - b_u[coo.row], minlength=n_items) / (
                n_i + self.item_reg
            )
        self.user_bias, self.item_bias = b_u, b_i
        return self

    def fold_in(self, rows: sp.spmatrix) -> np.ndarray:
        """(B,) user biases of the given rating rows, computed from those rows alone."""
        m = sp.csr_matrix(rows, dtype=np.float64)
        coo = m.tocoo()
        resid = coo.data - self.global_mean - self.item_bias[coo.col]
        sums = np.bincount(coo.row, resid, minlength=m.shape[0])
        return user_offset(sums, np.diff(m.indptr), self.user_reg)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Ratings for (row, column) pairs of the fitted matrix; indices outside the fitted
        users/movies fall back to a zero bias (movie bias, then the global mean)."""
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise ValueError(f"{users.size} users for {items.size} movies")
        return np.clip(
            self.global_mean + _lookup(self.user_bias, users) + _lookup(self.item_bias, items),
            *self.rating_range,
        )

    def score(self, rows: sp.spmatrix) -> np.ndarray:
        """(B, I) predicted ratings of every movie for the given rows (ranking by rating)."""
        b_u = self.fold_in(rows)
        return np.clip(
            self.global_mean + b_u[:, None] + self.item_bias[None, :], *self.rating_range
        )


@dataclass
class Popularity:
    """Scores every movie by the number of users who rated it in training, for everyone."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fit(self, train: sp.spmatrix) -> Popularity:
        """Count the ratings of each movie."""
        self.counts = np.diff(_csr(train).tocsc().indptr).astype(np.float64)
        return self

    def score(self, rows: sp.spmatrix) -> np.ndarray:
        """(B, I) the same popularity scores for every row."""
        return np.broadcast_to(self.counts, (rows.shape[0], self.counts.size)).copy()


@dataclass
class EASE:
    """Embarrassingly shallow autoencoder (Steck 2019): a linear item × item model with a zero
    diagonal over the binarised row, B = I − P / diag(P), P = (XᵀX + λI)⁻¹ (closed form)."""

    lam: float = 500.0  # L2 strength λ
    weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def fit(self, train: sp.spmatrix) -> EASE:
        """Solve for B on the binarised ``train``; O(I³) time, O(I²) memory."""
        self.weights = ease_weights(_csr(train), self.lam, np.float64)
        return self

    def score(self, rows: sp.spmatrix) -> np.ndarray:
        """(B, I) scores x·B of the binarised rows."""
        x = (sp.csr_matrix(rows) != 0).astype(np.float64)
        return np.asarray(x @ self.weights)

    @classmethod
    def tuned(
        cls,
        train: sp.spmatrix,
        lambdas: Sequence[float] = (50, 100, 200, 350, 500, 750, 1000, 2000),
        val_frac: float = 0.2,
        seed: int = 0,
    ) -> tuple[EASE, dict[float, float]]:
        """EASE with λ chosen by NDCG@10 on a per-user validation slice of ``train`` (never the
        test data; ``ml.model.tune_ease_lambda``, the model's own tuning), then refitted on all
        of ``train``. Returns (model, {λ: validation NDCG})."""
        best, results = tune_ease_lambda(_csr(train), lambdas, val_frac, seed)
        return cls(lam=cls.lam if best is None else best).fit(train), results
