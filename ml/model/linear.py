"""The linear item–item autoencoders, in closed form: EASE (Steck 2019) over the binary row —
the ranking's item–item part and the source of similar films — and the residual ridge over the
baseline's residuals (a rating path); their λ tuned on validation slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ml import metrics
from ml.model.baseline import bias_statistics, residual_matrix, user_offsets
from ml.model.config import ModelConfig


def _zero_diagonal_solution(p: np.ndarray) -> np.ndarray:
    """EASE's constrained solution from P = (G + λI)⁻¹: B = −P / diag(P) with diag(B) = 0."""
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


class GramSolver:
    """Closed-form zero-diagonal ridge solutions of one Gram matrix G for many λ.

    G = VSVᵀ is decomposed once; (G + λI)⁻¹ = V diag(1/(s + λ)) Vᵀ then costs two matrix
    products per λ instead of a fresh inverse, which is what makes tuning λ cheap."""

    def __init__(self, gram: np.ndarray) -> None:
        self.values, self.vectors = np.linalg.eigh(gram)  # (I,), (I, I)
        self.values = np.clip(self.values, 0.0, None)  # G is PSD; drop round-off negatives

    def solve(self, lam: float) -> np.ndarray:
        """B = I − P / diag(P), P = (G + λI)⁻¹: (I, I) float64, zero diagonal."""
        p = (self.vectors / (self.values + lam)[None, :]) @ self.vectors.T
        return _zero_diagonal_solution(p)


def _binary_gram(train: sp.csr_matrix) -> np.ndarray:
    x = (sp.csr_matrix(train) != 0).astype(np.float64)
    return np.asarray((x.T @ x).toarray())  # (I, I)


def ease_weights(
    train: sp.csr_matrix, lam: float, dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """Closed-form EASE (Steck 2019) on the binarised matrix: B = I - P / diag(P),
    P = (XᵀX + λI)⁻¹; the diagonal of B is exactly zero. Returns (I, I) of ``dtype`` (solved
    in float64). The one EASE solve: the model's path and the EASE baseline both call it."""
    gram = _binary_gram(train)
    gram[np.diag_indices_from(gram)] += lam
    return _zero_diagonal_solution(np.linalg.inv(gram)).astype(dtype, copy=False)


def tune_ease_lambda(
    train: sp.csr_matrix, lambdas: Sequence[float], frac: float, seed: int
) -> tuple[float | None, dict[float, float]]:
    """The EASE λ with the best NDCG@10 on a per-user validation slice of ``train`` (the
    protocol of ``ml.baselines.EASE.tuned``; relevance = held-out rating ≥ 4).

    Returns (best λ, {λ: validation NDCG@10}); best is None when the slice holds no relevant
    rating (too little data to tune)."""
    from ml.data import split_per_user  # deferred: ml.data is heavier than this module

    fit_part, val_part = split_per_user(train, frac, seed)
    relevant = metrics.relevance(val_part)  # (U, I)
    users = np.flatnonzero(relevant.any(axis=1))
    if users.size == 0 or fit_part.nnz == 0:
        return None, {}
    solver = GramSolver(_binary_gram(fit_part))
    x = (fit_part[users] > 0).astype(np.float64)  # (V, I)
    results: dict[float, float] = {}
    for lam in lambdas:
        scores = metrics.mask_seen(np.asarray(x @ solver.solve(lam)), fit_part[users])
        results[float(lam)] = float(np.nanmean(metrics.ndcg_at_k(scores, relevant[users], 10)))
    return max(results, key=lambda k: results[k]), results


def _dense_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ratings (B, I) float32, observed mask (B, I) bool) of the given rows of ``m``."""
    dense = np.asarray(sp.csr_matrix(m)[rows].toarray(), dtype=np.float32)
    return dense, dense != 0


def _entries_of_product(
    left: sp.csr_matrix, right: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """``(left @ right)[rows, cols]`` without building the whole (U, I) product: the rows are
    multiplied ``chunk`` users at a time."""
    out = np.zeros(rows.size)
    users = np.unique(rows)
    for start in range(0, users.size, chunk):
        block = users[start : start + chunk]
        dense = np.asarray(left[block] @ right)  # (B, I)
        local = np.searchsorted(block, rows)
        sel = (local < block.size) & (block[np.minimum(local, block.size - 1)] == rows)
        out[sel] = dense[local[sel], cols[sel]]
    return out


def ridge_item_weights(resid: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's closed form on residual ratings: W = argmin ‖R − RW‖² + λ‖W‖², diag(W) = 0,
    treating an unobserved residual as 0 (its expectation). (I, I) float32."""
    gram = np.asarray((resid.T @ resid).toarray())  # (I, I)
    gram[np.diag_indices_from(gram)] += lam
    return _zero_diagonal_solution(np.linalg.inv(gram)).astype(np.float32)


def tune_ridge_lambda(
    train: sp.csr_matrix, config: ModelConfig, lambdas: Sequence[float], frac: float, seed: int
) -> tuple[float | None, float, dict[float, float]]:
    """The residual ridge's λ and gain with the best RMSE on a random validation slice of
    ``train``'s ratings (protocol (a)'s kind of split).

    For each λ the ridge is solved on the rest; a held-out rating is predicted as
    μ + b_i + b_u + g · (user's residuals @ W)_i, with the gain g fitted in closed form (least
    squares on the slice). Returns (best λ, its gain, {λ: validation RMSE}); λ is None when the
    slice is empty."""
    from ml.data import split_ratings  # deferred: ml.data is heavier than this module

    fit_part, val_part = split_ratings(train, frac, seed)
    if val_part.nnz == 0 or fit_part.nnz == 0:
        return None, config.wide_rating_gain, {}
    mu, item_bias = bias_statistics(fit_part, config.item_bias_reg)
    resid = residual_matrix(fit_part, mu, item_bias, config.user_bias_reg)
    user_bias = user_offsets(fit_part, mu, item_bias, config.user_bias_reg)  # (U,)
    val = val_part.tocoo()
    target = val.data - mu - item_bias[val.col] - user_bias[val.row]  # (n_val,)
    solver = GramSolver(np.asarray((resid.T @ resid).toarray()))
    results: dict[float, tuple[float, float]] = {}
    base = mu + item_bias[val.col] + user_bias[val.row]  # (n_val,)
    low, high = float(train.data.min()), float(train.data.max())
    for lam in lambdas:
        signal = _entries_of_product(resid, solver.solve(lam), val.row, val.col)  # (n_val,)
        gain = float(signal @ target / max(float(signal @ signal), 1e-12))
        pred = np.clip(base + gain * signal, low, high)
        results[float(lam)] = (float(np.sqrt(np.mean((pred - val.data) ** 2))), gain)
    best = min(results, key=lambda k: results[k][0])
    return best, results[best][1], {k: v[0] for k, v in results.items()}


def cosine_neighbours(
    train: sp.csr_matrix, k: int, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Each movie's ``k`` nearest movies by cosine of their columns of the binary matrix
    (item-kNN), best first: ((I, k) int64 columns, (I, k) float32 cosines), padded with -1 and 0
    where a movie has fewer co-rated movies. Computed ``chunk`` columns at a time, so memory is
    (I × chunk), never (I × I). A movie is never its own neighbour."""
    x = (sp.csc_matrix(train) != 0).astype(np.float32)  # (U, I)
    n_items = x.shape[1]
    k = min(k, max(n_items - 1, 0))
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())  # (I,) binary: ‖x_i‖² = count
    norms[norms == 0] = 1.0
    xt = sp.csr_matrix(x.T)  # (I, U)
    cols = np.full((n_items, k), -1, dtype=np.int64)
    sims = np.zeros((n_items, k), dtype=np.float32)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        block = np.asarray((xt @ x[:, start:stop]).toarray())  # (I, C) co-rating counts
        block /= norms[:, None] * norms[None, start:stop]
        block[np.arange(start, stop), np.arange(stop - start)] = -1.0  # never itself
        top = np.argpartition(-block, k - 1, axis=0)[:k] if k else np.zeros((0, stop - start))
        top = top.astype(np.int64)
        vals = np.take_along_axis(block, top, axis=0)  # (k, C)
        order = np.argsort(-vals, axis=0, kind="stable")
        top, vals = np.take_along_axis(top, order, 0), np.take_along_axis(vals, order, 0)
        found = vals > 0
        cols[start:stop] = np.where(found, top, -1).T
        sims[start:stop] = np.where(found, vals, 0.0).T
    return cols, sims
