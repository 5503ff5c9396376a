"""The bias baseline: the global mean μ, the movie biases b_i and the user offset b_u — the one
place each formula lives; the model's rating paths predict residuals on μ + b_i + b_u."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


def bias_statistics(train: sp.csr_matrix, item_reg: float) -> tuple[float, np.ndarray]:
    """Global mean of the observed ratings and shrunk movie biases
    b_i = Σ_u (r_ui − μ) / (n_i + item_reg); a movie nobody rated gets 0."""
    csc = train.tocsc()
    if csc.nnz == 0:
        raise ValueError("the training matrix has no ratings")
    mu = float(csc.data.mean())
    counts = np.diff(csc.indptr)  # (I,)
    sums = np.asarray(csc.sum(axis=0)).ravel() - mu * counts  # (I,)
    return mu, (sums / (counts + item_reg)).astype(np.float32)


def user_offset(deviation_sums: Any, counts: Any, reg: float) -> Any:
    """The user offset b_u = Σ(r − μ − b_i) / (n_u + ``reg``): the sum of a user's deviations
    from the baseline over their n_u ratings, shrunk toward 0 by ``reg`` pseudo-ratings. Arrays
    or tensors alike. The one place of this formula: the model's forward passes and losses, its
    training statistics, the bias baseline and the serving fallback all call it."""
    return deviation_sums / (counts + reg)


def user_offsets(
    train: sp.csr_matrix, mu: float, item_bias: np.ndarray, user_reg: float
) -> np.ndarray:
    """(U,) user offsets (``user_offset``) of every row of ``train``, as the forward pass
    computes them."""
    coo = sp.coo_matrix(train, dtype=np.float64)
    dev = coo.data - mu - item_bias[coo.col]  # (nnz,)
    counts = np.bincount(coo.row, minlength=train.shape[0])
    return user_offset(np.bincount(coo.row, dev, minlength=train.shape[0]), counts, user_reg)


def residual_matrix(
    train: sp.csr_matrix, mu: float, item_bias: np.ndarray, user_reg: float
) -> sp.csr_matrix:
    """Observed ratings minus the model's baseline μ + b_i + b_u (see ``user_offsets``)."""
    coo = sp.coo_matrix(train, dtype=np.float64)
    user_bias = user_offsets(train, mu, item_bias, user_reg)
    dev = coo.data - mu - item_bias[coo.col] - user_bias[coo.row]  # (nnz,)
    return sp.csr_matrix((dev, (coo.row, coo.col)), shape=train.shape)
