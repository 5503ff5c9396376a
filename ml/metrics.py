"""Accuracy metrics, vectorised over a batch of users.

Conventions shared by every top-N metric here:

* ``scores`` is a dense (B, I) array of ranking scores, higher is better. Movies the user rated in
  training must already be excluded — set to ``-inf`` (see ``mask_seen``) — so that every other
  movie of the catalogue competes (no sampled negatives).
* ``relevant`` is a dense (B, I) boolean array: a held-out movie is relevant when its held-out
  rating is ≥ 4 (``relevance``).
* A user with no relevant held-out movie has no defined NDCG/recall/MAP and is **skipped**: the
  per-user result is NaN and the averages (``np.nanmean``) leave it out.
* Ties in scores are broken by the lower column index (a stable sort), so results are
  deterministic.

Every top-N function returns the per-user values (B,) so that batches can be concatenated before
averaging.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

RELEVANCE_THRESHOLD = 4.0


def relevance(heldout: sp.csr_matrix, threshold: float = RELEVANCE_THRESHOLD) -> np.ndarray:
    """Dense (B, I) boolean relevance from held-out ratings: rating ≥ ``threshold``."""
    dense = heldout.toarray() if sp.issparse(heldout) else np.asarray(heldout)
    return dense >= threshold


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """A copy of ``scores`` (B, I) with every movie present in ``seen`` set to -inf."""
    out = np.array(scores, dtype=np.float64, copy=True)
    if sp.issparse(seen):
        coo = sp.coo_matrix(seen)
        out[coo.row, coo.col] = -np.inf
    else:
        out[np.asarray(seen) != 0] = -np.inf
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, k) column indices of the k best scores per row, best first (ties: lower index)."""
    scores = np.asarray(scores)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    k = min(k, scores.shape[1])
    # Stable sort of -scores keeps the lower index first among equal scores.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _hits(scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, k) 0/1 hits of the top-k list and (B,) number of relevant movies per user."""
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    top = top_k(scores, k)  # (B, k)
    hits = np.take_along_axis(relevant, top, axis=1).astype(np.float64)  # (B, k)
    return hits, relevant.sum(axis=1)


def _skip_empty(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return np.where(n_relevant > 0, values, np.nan)


def ndcg_of_hits(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Binary NDCG per user from the (B, k) 0/1 hits of a top-k list and the (B,) number of
    relevant movies: DCG = Σ_{r≤k} rel_r / log2(r + 1), divided by the DCG of an ideal list with
    min(k, #relevant) hits first. NaN for a user with no relevant movie. The one place of this
    formula: ``ndcg_at_k``, the training's validation and the EASE λ tuning all come here."""
    hits = np.asarray(hits, dtype=np.float64)
    n_rel = np.asarray(n_relevant)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))  # (k,)
    dcg = hits @ discounts  # (B,)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])  # ideal DCG for 0..k hits
    idcg = ideal_cum[np.minimum(n_rel, hits.shape[1])]  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _skip_empty(dcg / idcg, n_rel)


def recall_of_hits(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Recall per user = hits in the top k / min(k, #relevant) — the normalisation of Liang et
    al. (Mult-VAE), so that a perfect list scores 1 even when a user has more than k relevant
    movies. NaN for a user with no relevant movie."""
    hits = np.asarray(hits, dtype=np.float64)
    n_rel = np.asarray(n_relevant)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _skip_empty(hits.sum(1) / np.minimum(n_rel, hits.shape[1]), n_rel)


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Binary NDCG@k per user of the scores' top k (``ndcg_of_hits``)."""
    return ndcg_of_hits(*_hits(scores, relevant, k))


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 20) -> np.ndarray:
    """Recall@k per user of the scores' top k (``recall_of_hits``)."""
    return recall_of_hits(*_hits(scores, relevant, k))


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Precision@k per user = hits in the top k / k. NaN for a user with no relevant movie
    (skipped like the other metrics, so that all top-N metrics average over the same users)."""
    hits, n_rel = _hits(scores, relevant, k)
    return _skip_empty(hits.sum(1) / k, n_rel)


def map_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Average precision@k per user: Σ_{r≤k} precision@r · rel_r / min(k, #relevant).
    NaN for a user with no relevant movie; MAP@k is the mean over users."""
    hits, n_rel = _hits(scores, relevant, k)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)  # (B, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_rank * hits).sum(1) / np.minimum(n_rel, hits.shape[1])
    return _skip_empty(ap, n_rel)


def coverage(top_lists: np.ndarray, n_items: int) -> float:
    """Catalogue coverage: the fraction of the ``n_items`` movies that appear in at least one
    of the given top lists (any shape of column indices, e.g. (U, 10))."""
    if n_items < 1:
        raise ValueError("n_items must be positive")
    return float(np.unique(np.asarray(top_lists).ravel()).size / n_items)


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error over paired ratings (every pair counts once)."""
    predicted, actual = _paired(predicted, actual)
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error over paired ratings (every pair counts once)."""
    predicted, actual = _paired(predicted, actual)
    return float(np.mean(np.abs(predicted - actual)))


def _paired(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if p.shape != a.shape:
        raise ValueError(f"{p.size} predictions for {a.size} ratings")
    if p.size == 0:
        raise ValueError("no ratings to compare")
    return p, a
