"""Item codes: the item-row autoencoder trained on the training matrix's columns (only its
codes are kept) and the per-request fold-in of a user's vector from their own ratings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.model.config import ModelConfig
from ml.progress import phase

FOLD_IN_GROUP = 32  # users per batched solve of the item-code fold-in (sorted by #ratings)


def train_item_codes(train: sp.csr_matrix, config: ModelConfig) -> np.ndarray:
    """The item-row autoencoder's codes: (I, d) float32, d = ``config.item_codes``.

    A movie is its column of ratings over the training users (0 = unrated). One sigmoid layer
    h_i = σ(r_i V + c) encodes it and a linear layer r̂_i = h_i W + b decodes it; the loss is the
    squared error over the observed ratings only plus ``item_code_l2``/2 · (‖V‖² + ‖W‖²) (the
    L2 share of each mini-batch in proportion to its movies), minimised by Adam. Only the codes
    are kept: the decoder's per-user rows are not, a user's row is folded in at inference time
    (``fold_in_codes``). Uses torch's global random state (seeded by the caller)."""
    from ml.data import densify  # deferred: ml.data is heavier than this module

    d = config.item_codes
    items = sp.csr_matrix(train.T, dtype=np.float32)  # (I, U)
    n_items, n_users = items.shape
    v = nn.Parameter(torch.randn(n_users, d) * 0.03)
    c = nn.Parameter(torch.zeros(d))
    w = nn.Parameter(torch.randn(d, n_users) * 0.03)
    b = nn.Parameter(torch.zeros(n_users))
    opt = torch.optim.Adam([v, c, w, b], lr=config.item_code_lr)
    bs = config.item_code_batch
    with phase("item codes", total=config.item_code_epochs) as passes:
        for done in range(1, config.item_code_epochs + 1):
            order = torch.randperm(n_items).numpy()
            for start in range(0, n_items, bs):
                rows = order[start : start + bs]
                x, m = densify(items, rows)  # (B, U)
                out = torch.sigmoid(x @ v + c) @ w + b  # (B, U)
                l2 = (v.square().sum() + w.square().sum()) * (rows.size / n_items)
                loss = ((out - x) * m).square().sum() + 0.5 * config.item_code_l2 * l2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            passes.step(done)
    codes = np.empty((n_items, d), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n_items, 1024):
            rows = np.arange(start, min(start + 1024, n_items))
            x, _ = densify(items, rows)
            codes[rows] = torch.sigmoid(x @ v + c).numpy()
    return codes


def _fold_in_groups(sizes: np.ndarray, limit: int) -> list[tuple[bool, np.ndarray]]:
    """The batched solves of ``fold_in_duals``: (dual form?, users) per group. Users with
    ratings are sorted by their number of ratings within each form and cut into groups of at
    most ``FOLD_IN_GROUP`` whose sizes differ by at most half, so padding stays small."""
    groups: list[tuple[bool, np.ndarray]] = []
    for dual in (True, False):
        users = np.flatnonzero((sizes > 0) & ((sizes < limit) if dual else (sizes >= limit)))
        users = users[np.argsort(sizes[users], kind="stable")]  # similar sizes pad little
        start = 0
        for end in range(1, users.size + 1):
            # A group ends when full, or before a user who would pad the others by over 50 %.
            last = end == users.size
            if (
                last
                or end - start == FOLD_IN_GROUP
                or sizes[users[end]] > 1.5 * sizes[users[start]] + 8
            ):
                groups.append((dual, users[start:end]))
                start = end
    return groups


def _fold_in_one(
    h: Tensor, cols: Tensor, y: Tensor, lam: float, dual: bool, item_gram: Tensor | None
) -> Tensor:
    """``fold_in_duals`` of one user who rated ``cols`` (n,) with residuals ``y`` (n,): α (n,),
    unpadded (the gram block gathered as its row block, then its columns)."""
    if dual:
        if item_gram is not None:
            gram = item_gram.index_select(0, cols).index_select(1, cols).float()  # (n, n)
        else:
            hr = h.index_select(0, cols)  # (n, d)
            gram = hr @ hr.T
        gram.diagonal().add_(lam)
        return torch.cholesky_solve(y.unsqueeze(1), torch.linalg.cholesky(gram)).squeeze(1)
    hr = h.index_select(0, cols)  # (n, d)
    gram = hr.T @ hr  # (d, d)
    gram.diagonal().add_(lam)
    w = torch.cholesky_solve((hr.T @ y).unsqueeze(1), torch.linalg.cholesky(gram))  # (d, 1)
    return (y - (hr @ w).squeeze(1)) / lam


def _dual_limit(d: int, item_gram: Tensor | None) -> int:
    """Fewer ratings than this are folded in the dual form. The dual costs about n³/3 with the
    gram gathered, n²·d more without it; the primal n·d² + d³/3: the dual is the cheaper one
    below 2d ratings with the gram, below d without."""
    return 2 * d if item_gram is not None else d


def fold_in_duals(
    codes: Tensor,
    indices: Tensor,
    resid: Tensor,
    lengths: Sequence[int],
    lam: float,
    item_gram: Tensor | None = None,
    grouped: bool | None = None,
) -> Tensor:
    """The item-code fold-in in dual coefficients: α (N,) float32, packed like ``indices``,
    such that each user's vector w_u = (H_Rᵀ H_R + λI)⁻¹ H_Rᵀ y_u on the codes H_R of the
    movies they rated (``indices``, packed user after user, ``lengths`` per user) and their
    residuals y_u (``resid``) is w_u = H_Rᵀ α_u: one embedding bag of the rated movies' codes
    weighted by α gives every user's vector (``fold_in_codes``), whatever form solved them.

    Users with fewer ratings than d (2d with ``item_gram``) are solved in the dual form,
    α = (H_R H_Rᵀ + λI)⁻¹ y_u (an n_u × n_u system), the others in the primal (d × d), whose
    solution gives α = (y_u − H_R w_u) / λ (from (H_RᵀH_R + λI) w_u = H_Rᵀ y_u). On the CPU, and
    for a batch of one user, each user is solved as they are; larger batches on an accelerator
    in groups (``_fold_in_groups``), each one batched Cholesky solve over users padded with
    zero rows, which leaves the solutions exact (a zero row adds nothing to H_Rᵀ H_R, and in
    the dual its α is 0).
    With ``item_gram`` (I × I, = codes @ codesᵀ, precomputed once) the dual's H_R H_Rᵀ is
    gathered from it rather than multiplied out (n_u² · d operations saved per user).
    ``grouped`` forces the batched groups (True) or the one-user solves (False) on any device
    (None: by the device)."""
    h = codes.float()
    d = h.shape[1]
    resid = resid.float()
    alpha = resid.new_zeros(indices.numel())
    if len(lengths) == 0 or indices.numel() == 0:
        return alpha
    limit = _dual_limit(d, item_gram)
    if len(lengths) == 1:
        return _fold_in_one(h, indices, resid, lam, indices.numel() < limit, item_gram)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    sizes = np.asarray(lengths, dtype=np.int64)
    if not (h.device.type != "cpu" if grouped is None else grouped):
        # On the CPU each user is solved alone: LAPACK on one unpadded matrix beats a padded
        # batched call at every batch size measured (8 to 400 users), and a user's α is then
        # the same whatever batch they are scored in.
        for a, n in zip(starts.tolist(), sizes.tolist(), strict=True):
            if n:
                part = slice(a, a + n)
                alpha[part] = _fold_in_one(h, indices[part], resid[part], lam, n < limit, item_gram)
        return alpha
    for dual, users in _fold_in_groups(sizes, limit):
        if users.size == 1:
            a, n = int(starts[users[0]]), int(sizes[users[0]])
            alpha[a : a + n] = _fold_in_one(
                h, indices[a : a + n], resid[a : a + n], lam, dual, item_gram
            )
            continue
        width = int(sizes[users].max())
        # (G, width) positions into the packed arrays; padding points at slot 0 and is masked.
        pos = starts[users, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < sizes[users, None]
        pos_t = torch.from_numpy(np.where(valid, pos, 0)).to(indices.device)
        valid_t = torch.from_numpy(valid).to(h.device)
        cols = indices[pos_t]  # (G, width)
        y = (resid[pos_t] * valid_t).unsqueeze(2)  # (G, width, 1)
        if dual and item_gram is not None:
            pair = valid_t.unsqueeze(2) & valid_t.unsqueeze(1)  # (G, width, width)
            at = (cols * item_gram.shape[1]).unsqueeze(2) + cols.unsqueeze(1)  # flat [r, r']
            gram = item_gram.take(at).float() * pair  # (G, width, width)
            gram.diagonal(dim1=1, dim2=2).add_(lam)
            a_g = torch.cholesky_solve(y, torch.linalg.cholesky(gram))  # (G, width, 1)
            alpha[torch.from_numpy(pos[valid]).to(alpha.device)] = a_g.squeeze(2)[valid_t]
            continue
        hr = h[cols] * valid_t.unsqueeze(2)  # (G, width, d), zero padding rows
        if dual:
            gram = hr @ hr.transpose(1, 2)  # (G, width, width)
            gram.diagonal(dim1=1, dim2=2).add_(lam)
            a_g = torch.cholesky_solve(y, torch.linalg.cholesky(gram))  # (G, width, 1)
        else:
            eye_d = torch.eye(d, dtype=h.dtype, device=h.device)
            gram = hr.transpose(1, 2) @ hr + lam * eye_d  # (G, d, d)
            rhs = hr.transpose(1, 2) @ y  # (G, d, 1)
            w = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))  # (G, d, 1)
            a_g = (y - hr @ w) / lam  # (G, width, 1), 0 on padding rows
        alpha[torch.from_numpy(pos[valid]).to(alpha.device)] = a_g.squeeze(2)[valid_t]
    return alpha


def fold_in_codes(
    codes: Tensor,
    indices: Tensor,
    resid: Tensor,
    lengths: Sequence[int],
    lam: float,
    item_gram: Tensor | None = None,
) -> Tensor:
    """Each user's vector w_u = (H_Rᵀ H_R + λI)⁻¹ H_Rᵀ y_u on the codes H_R of the movies they
    rated (``indices``, packed user after user, ``lengths`` per user) and their residuals y_u
    (``resid``): (B, d) float32, a row of zeros for a user without ratings; w_u = H_Rᵀ α_u
    from ``fold_in_duals`` (which says how each user is solved)."""
    h = codes.float()
    if len(lengths) == 0:
        return h.new_zeros(0, h.shape[1])
    alpha = fold_in_duals(codes, indices, resid, lengths, lam, item_gram)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return F.embedding_bag(
        indices,
        h,
        torch.from_numpy(offsets).to(indices.device),
        mode="sum",
        per_sample_weights=alpha,
    )
