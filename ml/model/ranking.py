"""Ranking helpers shared by the blend and the finishing steps: the top k of wide score rows,
ranks as scores, and the "clearly better" rule the finishing choices use."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TOP_K_CHUNK = 256  # columns per chunk of ``top_k_columns``' first pass


def _clearly_better(values: np.ndarray, reference: np.ndarray | None) -> bool:
    """Whether per-user ``values`` beat ``reference`` by more than two standard errors of the
    paired difference (users where either is NaN ignored); True without a reference."""
    if reference is None:
        return True
    diff = values - reference
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return False
    return bool(diff.mean() > 2.0 * diff.std(ddof=1) / np.sqrt(diff.size))


def top_k_columns(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, k, dim=1)`` as (values, indices) (B, k), best first, for rows of
    scores; on wide rows in two passes: the row's leading columns cut into chunks of
    ``TOP_K_CHUNK`` (a view when rows are contiguous), the k chunks with the largest maxima
    kept, and the top k taken among their k · chunk columns and the few columns past the last
    whole chunk.
    Exact: a chunk holding one of the row's k best values has a maximum at least that large,
    so it is among the k chunks with the largest maxima. Only ties may pick other columns.
    On an 87,000-column batch of 8, k = 10: about 0.6 ms against 2.0 ms for ``torch.topk``."""
    n_b, n = scores.shape
    n_chunks = n // TOP_K_CHUNK
    if k <= 0 or n_chunks < 4 * k:  # narrow rows: one pass is as fast
        top = torch.topk(scores, k, dim=1)
        return top.values, top.indices
    whole = n_chunks * TOP_K_CHUNK
    chunks = scores[:, :whole].reshape(n_b, n_chunks, TOP_K_CHUNK)  # a view of contiguous rows
    best = torch.topk(chunks.amax(2), k, dim=1).indices  # (B, k) chunks
    picked = chunks.gather(1, best.unsqueeze(2).expand(n_b, k, TOP_K_CHUNK))  # (B, k, chunk)
    within = torch.arange(TOP_K_CHUNK, device=scores.device)
    cols = (best.unsqueeze(2) * TOP_K_CHUNK + within).reshape(n_b, k * TOP_K_CHUNK)
    values = picked.reshape(n_b, k * TOP_K_CHUNK)
    if whole < n:  # the columns past the last whole chunk are always candidates
        tail = torch.arange(whole, n, device=scores.device).expand(n_b, -1)
        values, cols = torch.cat([values, scores[:, whole:]], 1), torch.cat([cols, tail], 1)
    top = torch.topk(values, k, dim=1)
    return top.values, cols.gather(1, top.indices)


def ranks_as_scores(cols: np.ndarray, vals: np.ndarray, n_items: int) -> np.ndarray:
    """(B, I) scores whose order is the ranked lists ``cols`` (B, k), best first: k − rank at
    the listed columns (−inf where ``vals`` is −inf: nothing was left to list), −inf elsewhere.
    For metrics that read a top-k of at most k from full score rows."""
    out = np.full((cols.shape[0], n_items), -np.inf)
    ranks = np.arange(cols.shape[1], 0, -1, dtype=np.float64)
    np.put_along_axis(out, cols, np.where(np.isfinite(vals), ranks, -np.inf), axis=1)
    return out
