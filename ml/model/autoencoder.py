"""The stacked autoencoder over a user's rating row, with a rating head and a ranking head.

One user is one row of the (users × movies) ratings matrix. The encoder reads the row — the
residuals of the observed ratings on a bias baseline and the binary "has rated" pattern, both
scaled by 1/sqrt(#ratings) so that heavy and light raters give inputs of the same size — and
compresses it through ``config.hidden``; the decoder mirrors the encoder back to the width of the
first hidden layer, and two linear heads read that:

* the **rating head** predicts the user's rating of every movie (masked MSE on observed ratings:
  movies the user has not rated never contribute), as residuals on
  ``global mean + movie bias + user offset`` when ``config.baseline`` is on;
* the **ranking head** scores every movie, rated or not, trained with the multinomial
  log-likelihood of the binarised row (Mult-DAE).
  A *wide* linear path — an item × item matrix with a zero diagonal applied to the binary row,
  the closed-form EASE solution of the training matrix — sits beside the deep stack: the deep
  head learns on its own and the served score is
  ``EASE score + wide_mix · log-softmax(deep logits)``.
* A second wide path feeds the rating head: an item × item ridge regression (zero diagonal) of a
  user's residual ratings on the other residuals, solved in closed form from the training matrix,
  with a learned gain.
* A third rating path reads frozen movie codes (I × d) from an item-row autoencoder trained on
  the training matrix's columns; a user's vector is folded in at inference time by a ridge
  regression of the user's residuals on the codes of the movies they rated, so a visitor or a
  fresh rating needs no retraining. Its weight is fitted on held-out ratings beside the other
  paths' scales (``calibrate_rating_paths``).

The tutorial model (20-10-20 sigmoid, MSE on rated entries only) is ``ModelConfig.tutorial()``;
its ranking scores are its predicted ratings.

Every statistic computed from the training data (global mean, movie biases, rating scale, the
EASE initialisation) is a buffer or parameter, so ``state_dict()`` plus ``architecture()`` rebuild
the model exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml import metrics
from ml.model.baseline import bias_statistics, residual_matrix, user_offset
from ml.model.config import ACTIVATIONS, ModelConfig
from ml.model.item_codes import fold_in_codes, fold_in_duals, train_item_codes
from ml.model.linear import (
    _dense_rows,
    cosine_neighbours,
    ease_weights,
    ridge_item_weights,
    tune_ease_lambda,
    tune_ridge_lambda,
)
from ml.model.ranking import _clearly_better, ranks_as_scores, top_k_columns
from ml.progress import phase

logger = logging.getLogger(__name__)


@dataclass
class SparseUsers:
    """A packed sparse batch of B users encoded once (``Autoencoder.encode_sparse``): what the
    ranking scores and the predicted ratings of any columns are computed from."""

    hidden: Tensor  # (B, h0) decoded layer both heads read
    user_bias: Tensor | None  # (B, 1) user offsets (None without the bias baseline)
    resid: Tensor  # (N,) residuals of the rated movies (raw ratings without the baseline)
    indices: Tensor  # (N,) rated movie columns, user after user
    offsets: Tensor  # (B,) start of each user in ``indices``
    seg: Tensor  # (N,) the user of each entry
    wide: Tensor | None  # (B, I) EASE scores, zero diagonal (None without that path)
    code_alpha: Tensor | None  # (N,) item-code dual coefficients, packed like ``indices``
    # (``fold_in_duals``; None when that path is off)


def _per_entry(per_user: Tensor, seg: Tensor, n: int) -> Tensor:
    """Per-user values (B, 1) spread over the users' ``n`` packed entries ``seg`` (N,)."""
    if per_user.shape[0] == 1:
        return per_user.view(1).expand(n)
    return per_user[:, 0].index_select(0, seg)


class Autoencoder(nn.Module):
    """Stacked autoencoder with a rating head and a ranking head sharing one encoder."""

    global_mean: Tensor  # () buffers: statistics of the training matrix
    item_bias: Tensor  # (I,)
    rating_min: Tensor  # ()
    rating_max: Tensor  # ()

    def __init__(self, n_items: int, config: ModelConfig) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.n_items = n_items
        self.config = config
        sizes = config.hidden
        first = sizes[0]
        self.act = ACTIVATIONS[config.activation]()
        self.code_dropout = nn.Dropout(config.dropout)
        # Statistics of the training matrix, filled by from_data or load_state_dict.
        self.register_buffer("global_mean", torch.zeros(()))
        self.register_buffer("item_bias", torch.zeros(n_items))
        self.register_buffer("rating_min", torch.tensor(1.0))
        self.register_buffer("rating_max", torch.tensor(5.0))
        # First layer, stored (I, h) so that a sparse row is an embedding bag over rated movies.
        scale = 1.0 / np.sqrt(n_items)
        self.w_rating = (
            nn.Parameter(torch.randn(n_items, first) * scale) if config.rating_input else None
        )
        self.w_binary = (
            nn.Parameter(torch.randn(n_items, first) * scale) if config.binary_input else None
        )
        self.input_bias = nn.Parameter(torch.zeros(first))
        pairs = list(itertools.pairwise(sizes))
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.decoder = nn.ModuleList(nn.Linear(b, a) for a, b in reversed(pairs))  # the mirror
        self.rating_head = nn.Linear(first, n_items)
        self.ranking_head = nn.Linear(first, n_items) if config.ranking_loss != "none" else None
        self.wide = (  # EASE's closed-form solution, frozen
            nn.Parameter(torch.zeros(n_items, n_items), requires_grad=False)
            if self._has_wide()
            else None
        )
        has_wide_rating = (
            config.wide_rating and config.baseline and n_items <= config.wide_max_items
        )
        self.wide_rating = (
            nn.Parameter(torch.zeros(n_items, n_items), requires_grad=False)
            if has_wide_rating
            else None
        )
        self.wide_rating_gain = (
            nn.Parameter(torch.tensor(float(config.wide_rating_gain))) if has_wide_rating else None
        )
        # Item-code rating path: frozen codes (I × d) and its weight, 0 until calibrated.
        has_codes = config.item_codes > 0 and config.baseline and n_items <= config.wide_max_items
        self.item_code = (
            nn.Parameter(torch.zeros(n_items, config.item_codes), requires_grad=False)
            if has_codes
            else None
        )
        self.item_code_gain = (
            nn.Parameter(torch.zeros(()), requires_grad=False) if has_codes else None
        )
        # Similar films without EASE: each movie's nearest by cosine (cosine_neighbours).
        self.similar_cols: Tensor | None
        self.similar_weights: Tensor | None
        if not self._has_wide() and config.similar_k > 0:
            k = min(config.similar_k, max(n_items - 1, 0))
            self.register_buffer("similar_cols", torch.full((n_items, k), -1, dtype=torch.long))
            self.register_buffer("similar_weights", torch.zeros(n_items, k))
        else:
            self.similar_cols = self.similar_weights = None

    def _has_wide(self) -> bool:
        cfg = self.config
        return cfg.wide and cfg.ranking_loss != "none" and self.n_items <= cfg.wide_max_items

    # -------------------------------------------------------------------- construction
    @classmethod
    def from_data(cls, train: sp.csr_matrix, config: ModelConfig) -> Autoencoder:
        """A fresh model sized for ``train`` with its statistics (global mean, movie biases,
        rating scale) computed from the training ratings, and its wide paths' λ tuned on
        validation slices of them (``tune_closed_form_paths``) then solved on all of them."""
        if not sp.issparse(train):
            raise TypeError("train must be a scipy.sparse CSR matrix")
        train = sp.csr_matrix(train, dtype=np.float32)
        if config.wide and train.shape[1] > config.wide_max_items:
            logger.warning(
                "catalogue of %d movies exceeds wide_max_items=%d: no wide path",
                train.shape[1],
                config.wide_max_items,
            )
        config = dataclasses.replace(config)  # the tuned λ are recorded in the model's copy
        too_many_cells = train.shape[0] * train.shape[1] > config.item_code_max_cells
        if config.item_codes and train.shape[1] <= config.wide_max_items and too_many_cells:
            logger.warning(
                "%d users × %d movies exceeds item_code_max_cells=%d: no item-code path",
                *train.shape,
                config.item_code_max_cells,
            )
            config.item_codes = 0
        model = cls(train.shape[1], config)
        mu, item_bias = bias_statistics(train, config.item_bias_reg)
        with torch.no_grad():
            model.global_mean.fill_(mu)
            model.item_bias.copy_(torch.from_numpy(item_bias))
            model.rating_min.fill_(float(train.data.min()))
            model.rating_max.fill_(float(train.data.max()))
        if model.wide is not None or model.wide_rating is not None:
            with phase("tuning"):
                model.tune_closed_form_paths(train)
                model.fit_closed_form_paths(train)
        model.fit_item_codes(train)
        model.fit_similar(train)
        return model

    @torch.no_grad()
    def fit_similar(self, train: sp.csr_matrix) -> None:
        """Store each movie's nearest movies by cosine over ``train`` (``cosine_neighbours``),
        the similar films of a model without EASE; nothing for a model with EASE."""
        if self.similar_cols is None or self.similar_weights is None:
            return
        with phase("similar films"):
            cols, sims = cosine_neighbours(train, self.similar_cols.shape[1])
        self.similar_cols.copy_(torch.from_numpy(cols))
        self.similar_weights.copy_(torch.from_numpy(sims))

    @torch.no_grad()
    def fit_item_codes(self, train: sp.csr_matrix) -> None:
        """Train the item-row autoencoder on ``train`` and keep its codes (``train_item_codes``);
        the path's weight is left for ``calibrate_rating_paths`` to fit."""
        if self.item_code is None:
            return
        with torch.enable_grad():
            codes = train_item_codes(sp.csr_matrix(train, dtype=np.float32), self.config)
        self.item_code.copy_(torch.from_numpy(codes))

    def _codes_active(self) -> bool:
        """Whether the item-code path contributes: eval mode and a fitted, non-zero weight."""
        return (
            self.item_code is not None
            and self.item_code_gain is not None
            and not self.training
            and self.item_code_gain.item() != 0
        )

    def _fold_in(self, indices: Tensor, resid: Tensor, lengths: Sequence[int]) -> Tensor:
        """(B, d) user vectors of the item-code path from packed rated columns and residuals."""
        assert self.item_code is not None
        return fold_in_codes(
            self.item_code,
            indices,
            resid,
            lengths,
            self.config.item_code_lambda,
            self._item_code_gram(),
        )

    def _item_code_gram(self) -> Tensor:
        """H Hᵀ (I × I, float32) of the current codes, computed once and cached (not part of
        the state: it is recomputed when the codes are replaced, moved or cast)."""
        assert self.item_code is not None

        def gram(codes: Tensor) -> Tensor:
            h = codes.detach().float()
            with torch.inference_mode(False), torch.no_grad():
                return (h @ h.T).contiguous()

        out: Tensor = self._derived("_gram_cache", self.item_code, gram)
        return out

    def _column_base(self) -> Tensor:
        """(I,) what every user's predicted rating of a movie adds to the rating head's
        product: its bias, with the baseline the global mean and the movie's bias (cached)."""
        bias = self.rating_head.bias
        if not self.config.baseline:
            return bias
        if torch.is_grad_enabled():
            return bias + self.global_mean + self.item_bias

        def total(_: Any) -> Tensor:
            with torch.inference_mode(False), torch.no_grad():
                return bias + self.global_mean + self.item_bias

        base: Tensor = self._derived(
            "_column_base_cache", (bias, self.item_bias, self.global_mean), total
        )
        return base

    def _zero_diagonal(self, weights: Tensor) -> bool:
        """Whether the square ``weights`` (a wide path) has an exactly zero diagonal, as the
        closed-form solutions do: its diagonal terms then need no subtracting (cached)."""
        name = "_zero_diag_wide" if weights is self.wide else "_zero_diag_wide_rating"
        zero: bool = self._derived(
            name, weights, lambda w: bool((torch.diagonal(w.detach()) == 0).all())
        )
        return zero

    def _derived(self, name: str, source: Tensor | tuple[Tensor, ...], make: Any) -> Any:
        """``make(source)``, cached under ``name`` until a ``source`` tensor is replaced,
        modified in place, moved or cast (storage, version counter, dtype and device: the
        key). Not part of the state."""
        sources = source if isinstance(source, tuple) else (source,)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        cached = self.__dict__.get(name)
        if cached is None or cached[0] != key:
            cached = (key, make(source))
            self.__dict__[name] = cached
        return cached[1]

    def tune_closed_form_paths(
        self, train: sp.csr_matrix, seed: int | None = None, rating_path: bool = True
    ) -> None:
        """Choose the λ of the wide paths on validation slices of ``train`` (seed: ``seed``, else
        ``config.tune_seed``) among the config's candidates (EASE: NDCG@10; residual ridge, with
        ``rating_path``: RMSE, with its gain) and record them in ``self.config``; without
        candidates or a usable slice the configured λ stay."""
        cfg = self.config
        seed = cfg.tune_seed if seed is None else seed
        if self.wide is not None and cfg.wide_lambdas:
            best, tried = tune_ease_lambda(train, cfg.wide_lambdas, cfg.tune_frac, seed)
            logger.info("wide path: validation NDCG@10 per λ %s", tried)
            if best is not None:
                cfg.wide_lambda = best
        if rating_path and self.wide_rating is not None and cfg.wide_rating_lambdas:
            best, gain, errors = tune_ridge_lambda(
                train, cfg, cfg.wide_rating_lambdas, cfg.tune_frac, seed
            )
            logger.info("residual ridge: validation RMSE per λ %s", errors)
            if best is not None and self.wide_rating_gain is not None:
                cfg.wide_rating_lambda, cfg.wide_rating_gain = best, gain
                with torch.no_grad():
                    self.wide_rating_gain.fill_(gain)

    @torch.no_grad()
    def fit_closed_form_paths(self, train: sp.csr_matrix, rating_path: bool = True) -> None:
        """Solve the wide paths (EASE, and with ``rating_path`` the residual ridge) in closed
        form on ``train`` with the configured λ and the model's own biases. Cheap next to
        training, so a caller may refit them on more data after the deep part has been trained
        (in the default "ensemble" mode the deep head never reads the EASE path)."""
        train = sp.csr_matrix(train, dtype=np.float32)
        if train.shape[1] != self.n_items:
            raise ValueError(f"train has {train.shape[1]} movies, the model {self.n_items}")
        cfg = self.config
        if self.wide is not None:
            self.wide.copy_(torch.from_numpy(ease_weights(train, cfg.wide_lambda)))
        if rating_path and self.wide_rating is not None:
            mu, item_bias = float(self.global_mean), self.item_bias.cpu().numpy()
            resid = residual_matrix(train, mu, item_bias, cfg.user_bias_reg)
            weights = ridge_item_weights(resid, cfg.wide_rating_lambda)
            self.wide_rating.copy_(torch.from_numpy(weights))

    @torch.no_grad()
    def choose_wide_mix(self, train: sp.csr_matrix, held_out: sp.csr_matrix) -> dict[float, float]:
        """Set ``config.wide_mix`` to the candidate of ``config.wide_mixes`` with the best
        NDCG@10 on ``held_out`` (ratings the deep head was not trained on; relevance = rating
        ≥ 4), each user's list ranked from their ``train`` row — but only when it beats 0 (EASE
        alone) by more than two standard errors of the per-user difference: a small slice must
        not let noise in. Returns {mix: NDCG@10}; a model without the "ensemble" EASE path,
        candidates or relevant held-out ratings keeps its mix."""
        cfg = self.config
        if self.wide is None or not cfg.wide_mixes:
            return {}
        relevant = metrics.relevance(sp.csr_matrix(held_out))  # (U, I)
        users = np.flatnonzero(relevant.any(axis=1))
        if users.size == 0:
            return {}
        mixes = sorted(set(cfg.wide_mixes))
        per_mix: dict[float, list[np.ndarray]] = {mix: [] for mix in mixes}
        was_training = self.training
        self.eval()
        for start in range(0, users.size, 512):  # bounded (B, I) blocks
            rows = users[start : start + 512]
            x, m = (torch.from_numpy(a) for a in _dense_rows(train, rows))
            _, logits = self._heads(x, m, training_logits=True)
            binary = m.to(self.wide.dtype)
            wide = (binary @ self.wide - binary * torch.diagonal(self.wide)).numpy()  # (B, I)
            deep = F.log_softmax(logits, dim=1).numpy()
            for mix in mixes:
                ranked = metrics.mask_seen(wide + mix * deep, m.numpy())
                per_mix[mix].append(metrics.ndcg_at_k(ranked, relevant[rows], 10))
        self.train(was_training)
        per_user = {mix: np.concatenate(v) for mix, v in per_mix.items()}
        results = {mix: float(np.nanmean(v)) for mix, v in per_user.items()}
        best = max(results, key=lambda k: (results[k], -k))
        cfg.wide_mix = best if _clearly_better(per_user[best], per_user.get(0.0)) else 0.0
        return results

    @torch.no_grad()
    def calibrate_rating_paths(
        self, train: sp.csr_matrix, held_out: sp.csr_matrix
    ) -> dict[str, float]:
        """Refit the weights of the rating paths — the deep rating head's output, the residual
        ridge's gain and the item-code path's weight — by least squares on ``held_out``
        ratings the model was not trained on, each predicted from its user's ``train`` row; the
        bias baseline stays.

        The deep scale is folded into the rating head's weights and bias, the ridge scale into
        its gain, the item-code weight replaces that path's weight (fitted on the path's unit
        output), so the module keeps its parameters. Returns the fitted scales and the
        held-out RMSE before and after ({} when there is nothing to fit)."""
        if not self.config.baseline or held_out.nnz == 0:
            return {}
        held = sp.coo_matrix(held_out)
        users = np.unique(held.row)
        parts: list[np.ndarray] = []  # rows of (base, deep, ridge, codes, target)
        for start in range(0, users.size, 512):
            rows = users[start : start + 512]
            x, m = (torch.from_numpy(a) for a in _dense_rows(train, rows))
            sel = np.isin(held.row, rows)
            local = np.searchsorted(rows, held.row[sel])
            parts.append(self._rating_parts(x, m, local, held.col[sel], held.data[sel]))
        base, deep, ridge, codes, target = np.concatenate(parts, axis=1)
        has_ridge = self.wide_rating is not None and self.wide_rating_gain is not None
        has_codes = self.item_code is not None and self.item_code_gain is not None
        names = ["deep", *(["ridge"] if has_ridge else []), *(["codes"] if has_codes else [])]
        columns = {"deep": deep, "ridge": ridge, "codes": codes}
        features = np.stack([columns[n] for n in names], axis=1)  # (n, paths)
        scales, *_ = np.linalg.lstsq(features, target - base, rcond=None)
        low, high = float(self.rating_min), float(self.rating_max)

        def rmse(pred: np.ndarray) -> float:
            return float(np.sqrt(np.mean((np.clip(pred, low, high) - target) ** 2)))

        gain = float(self.item_code_gain) if self.item_code_gain is not None else 0.0
        before = rmse(base + deep + ridge + gain * codes)
        after = rmse(base + features @ scales)
        fitted = dict(zip(names, (float(v) for v in scales), strict=True))
        out = {"deep_scale": fitted["deep"], "rmse_before": before, "rmse_after": after}
        self.config.rerank_sigma = round(after, 4)  # the spread the re-ranking assumes
        self.rating_head.weight.mul_(fitted["deep"])
        self.rating_head.bias.mul_(fitted["deep"])
        if has_ridge and self.wide_rating_gain is not None:
            self.wide_rating_gain.mul_(fitted["ridge"])
            out["ridge_scale"] = fitted["ridge"]
        if has_codes and self.item_code_gain is not None:
            self.item_code_gain.fill_(fitted["codes"])
            out["codes_weight"] = fitted["codes"]
        return out

    def _rating_parts(
        self, x: Tensor, m: Tensor, rows: np.ndarray, cols: np.ndarray, target: np.ndarray
    ) -> np.ndarray:
        """(5, n) bias baseline, deep head output, ridge term, item-code term at unit weight and
        target at the given entries of a dense batch, in eval mode (for
        ``calibrate_rating_paths``)."""
        was_training = self.training
        self.eval()
        mask = m.to(self.input_bias.dtype)
        dev = (x - self.global_mean - self.item_bias) * mask
        n = mask.sum(1, keepdim=True)  # (B, 1)
        user_bias = user_offset(dev.sum(1, keepdim=True), n, self.config.user_bias_reg)  # (B, 1)
        base = self.global_mean + self.item_bias + user_bias  # (B, I)
        resid = (dev - user_bias) * mask
        full, _ = self._heads(x, m)  # base + deep + ridge + codes, unclamped
        ridge = torch.zeros_like(full)
        if self.wide_rating is not None and self.wide_rating_gain is not None:
            wide_r = resid @ self.wide_rating - resid * torch.diagonal(self.wide_rating)
            ridge = self.wide_rating_gain * wide_r
        codes = torch.zeros_like(full)
        if self.item_code is not None and self.item_code_gain is not None:
            codes = self._dense_codes(resid, m)  # (B, I) at unit weight
        deep = full - base - ridge
        if self._codes_active():
            assert self.item_code_gain is not None
            deep = deep - self.item_code_gain * codes
        self.train(was_training)
        r, c = torch.from_numpy(rows), torch.from_numpy(cols)
        picked = [t[r, c].double().numpy() for t in (base, deep, ridge, codes)]
        return np.stack([*picked, np.asarray(target, dtype=np.float64)])

    def _dense_codes(self, resid: Tensor, m: Tensor) -> Tensor:
        """(B, I) item-code path at unit weight for a dense batch: every user's vector folded
        in from their observed residuals, times every movie's code."""
        assert self.item_code is not None
        rows, cols = m.nonzero(as_tuple=True)  # row-major: users in order
        lengths = torch.bincount(rows, minlength=m.shape[0]).tolist()
        w = self._fold_in(cols, resid[rows, cols], lengths)  # (B, d)
        return (w @ self.item_code.float().T).to(resid.dtype)

    def architecture(self) -> dict[str, Any]:
        """JSON-serialisable arguments that rebuild an empty module of the same shape."""
        return {"kind": "autoencoder", "n_items": self.n_items, "config": self.config.to_dict()}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> Autoencoder:
        """Empty module described by ``architecture()``; weights come from load_state_dict."""
        if arch.get("kind", "autoencoder") != "autoencoder":
            raise ValueError(f"not an autoencoder architecture: {arch.get('kind')!r}")
        try:
            config = dict(arch["config"])
            # Checkpoints written before the item-code path existed have no such path.
            config.setdefault("item_codes", 0)
            # Nor did those written before the stored neighbours of similar films.
            config.setdefault("similar_k", 0)
            return cls(int(arch["n_items"]), ModelConfig.from_dict(config))
        except KeyError as exc:
            raise ValueError(f"architecture lacks {exc.args[0]!r}") from exc

    # -------------------------------------------------------------------- forward
    def forward(self, ratings: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Ratings (B, I) with 0 where ``mask`` is False → (predicted ratings (B, I) clamped to the
        rating scale, ranking scores (B, I)). Higher score = better recommendation."""
        pred, scores = self._heads(ratings, mask)
        pred = pred.clamp(self.rating_min, self.rating_max)
        return pred, (pred if self.ranking_head is None else scores)

    def _first_layer_sparse(
        self,
        indices: Tensor,
        offsets: Tensor,
        n_b: int,
        rating_weights: Tensor,
        binary_weights: Tensor,
    ) -> Tensor:
        """The first layer's pre-activation (B, h0) from packed rows: embedding bags of the
        rated movies' rows, weighted by the scaled residuals and the scaled "has rated" flags."""
        h = self.input_bias.expand(n_b, -1)
        if self.w_rating is not None:
            h = h + F.embedding_bag(
                indices, self.w_rating, offsets, mode="sum", per_sample_weights=rating_weights
            )
        if self.w_binary is not None:
            h = h + F.embedding_bag(
                indices, self.w_binary, offsets, mode="sum", per_sample_weights=binary_weights
            )
        return h

    def forward_sparse(
        self, indices: Tensor, values: Tensor, offsets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The same as ``forward`` for B users given as a packed sparse batch: user b rated the
        movie columns ``indices[offsets[b]:offsets[b+1]]`` with ``values[...]`` (each movie at
        most once per user). The first layer and the wide paths only read the rated movies'
        weights — the serving path for large catalogues."""
        users = self.encode_sparse(indices, values, offsets)
        pred = self._full_ratings(users).clamp(self.rating_min, self.rating_max)
        if self.ranking_head is None:
            return pred, pred
        return pred, self._scores(users.hidden, users.wide, training_logits=False)

    def rank_sparse(self, users: SparseUsers) -> Tensor:
        """(B, I) ranking scores of encoded users (``encode_sparse``) without the (B, I) rating
        output when the ranking head is separate; ``rate_columns`` then rates chosen movies."""
        if self.ranking_head is None:
            return self._full_ratings(users).clamp(self.rating_min, self.rating_max)
        return self._scores(users.hidden, users.wide, training_logits=False)

    def rate_columns(self, users: SparseUsers, cols: Tensor) -> Tensor:
        """Predicted ratings (B, k) of the movie columns ``cols`` (B, k) only, equal to the
        matching entries of ``forward_sparse``'s ratings: each rating path (deep head, residual
        ridge, item codes) is evaluated on the k columns instead of the whole catalogue.

        The residual ridge is summed over the whole catalogue (the rated movies' rows read
        in order touch fewer cache lines than the N × k entries scattered over them) and read
        at the k columns; the item-code term is the users' vectors (from their dual
        coefficients) times the k movies' codes."""
        cols = cols.long()
        n_b, k = cols.shape
        flat = cols.reshape(-1)
        weight = self.rating_head.weight
        # Products as elementwise sums over the last axis, not bmm: the same arithmetic at
        # every batch size, so one user and a batch get the same ratings.
        rows = weight.index_select(0, flat).view(n_b, k, -1)  # (B, k, h0)
        h = users.hidden.to(weight.dtype).unsqueeze(1)  # (B, 1, h0)
        base = self._column_base().index_select(0, flat).view(n_b, k)
        pred = (rows * h).sum(2) + base  # (B, k)
        if users.user_bias is not None:
            pred = pred + users.user_bias
        if self.wide_rating is not None and self.wide_rating_gain is not None:
            ridge = self._ridge_rows(users).gather(1, cols)  # (B, k)
            pred = torch.addcmul(pred, self.wide_rating_gain, ridge)  # + gain · ridge
        code_gain = self.item_code_gain
        if users.code_alpha is not None and code_gain is not None:
            assert self.item_code is not None
            w = self.code_vectors(users)  # (B, d)
            assert w is not None
            picked = self.item_code.index_select(0, flat).view(n_b, k, -1).float()
            codes = (picked * w.unsqueeze(1)).sum(2)  # (B, k)
            pred = torch.addcmul(pred, code_gain, codes.to(pred.dtype))  # + gain · codes
        return pred.clamp(self.rating_min, self.rating_max)

    def rerank_terms(self, preds: Tensor) -> Tensor:
        """What the re-ranking adds to the ranking score of a candidate with predicted rating
        ``preds``: ``rerank_weight · log Φ((preds − threshold) / sigma)``, the log-probability
        that the user rates it above the threshold under a normal spread."""
        cfg = self.config
        z = (preds.double() - cfg.rerank_threshold) / cfg.rerank_sigma
        return (cfg.rerank_weight * torch.special.log_ndtr(z)).to(preds.dtype)

    def top_k_sparse(
        self, users: SparseUsers, blocked: Tensor | None, k: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The ranking every caller serves: columns (B, k), scores (B, k) and predicted ratings
        (B, k) of the best ``k`` columns of encoded users that neither their own ratings nor
        ``blocked`` ((B, I), or (1, I) for every user; None: nothing more) exclude.

        With ``rerank_weight`` 0 it is the top ``k`` of ``rank_sparse``. Otherwise the best
        ``rerank_candidates`` allowed columns by that score are rated (``rate_columns``, those
        columns only) and ordered by score + ``rerank_terms`` (ties: the score's order), the
        score returned being that sum; any further positions follow in the score's order. A
        position with nothing allowed left has score −inf."""
        scores = self.rank_sparse(users).float()  # (B, I)
        if blocked is not None:
            scores = scores.masked_fill(blocked, -torch.inf)  # a new tensor
        elif scores is users.wide:
            scores = scores.clone()  # (EASE alone) the encoded users' own scores stay intact
        scores.index_put_((users.seg, users.indices), scores.new_tensor(-torch.inf))  # rated
        cfg = self.config
        k = min(k, self.n_items)
        n_cand = min(cfg.rerank_candidates, self.n_items)
        if cfg.rerank_weight == 0 or k <= 0:
            top_v, top_i = top_k_columns(scores, k)
            return top_i, top_v, self.rate_columns(users, top_i).float()
        top_v, top_i = top_k_columns(scores, max(k, n_cand))
        cand = top_i[:, :n_cand]
        preds = self.rate_columns(users, cand).float()  # (B, K')
        combined = top_v[:, :n_cand] + self.rerank_terms(preds)
        order = torch.sort(combined, dim=1, descending=True, stable=True).indices[:, :k]
        cols, vals, preds = cand.gather(1, order), combined.gather(1, order), preds.gather(1, order)
        if k > n_cand:  # positions past the candidates, in the score's order: rated as well
            rest = top_i[:, n_cand:]
            cols = torch.cat([cols, rest], dim=1)
            vals = torch.cat([vals, top_v[:, n_cand:]], dim=1)
            preds = torch.cat([preds, self.rate_columns(users, rest).float()], dim=1)
        return cols, vals, preds

    @torch.no_grad()
    def top_k_csr(self, rows: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``top_k_sparse`` of every row of a CSR (users × this model's columns), each user's
        rated movies blocked: (columns (B, k), scores (B, k)), in eval mode."""
        rows = sp.csr_matrix(rows, dtype=np.float32)
        dev = self.input_bias.device
        lengths = torch.from_numpy(np.diff(rows.indptr).astype(np.int64)).to(dev)
        offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)[:-1]])
        indices = torch.from_numpy(rows.indices.astype(np.int64)).to(dev)
        values = torch.from_numpy(rows.data).to(dev)
        was_training = self.training
        self.eval()
        users = self.encode_sparse(indices, values, offsets)
        cols, vals, _ = self.top_k_sparse(users, None, k)
        self.train(was_training)
        return cols.cpu().numpy(), vals.float().cpu().numpy()

    @torch.no_grad()
    def choose_rerank(self, train: sp.csr_matrix, held_out: sp.csr_matrix) -> dict[float, float]:
        """Set ``config.rerank_weight`` from the candidates ``config.rerank_weights`` by
        NDCG@10 on ``held_out`` (ratings the model was not trained on; relevance = rating ≥ 4),
        each user's list ranked from their ``train`` row (``top_k_csr``): the best candidate,
        unless the ranking score's order alone (weight 0) beats it by more than two standard
        errors of the per-user difference. The candidates were chosen, and passed the rule in
        the other direction, on larger validation slices (docs/model.md); a 5 % slice is too
        small to confirm a gain of that size, but large enough to catch a weight that harms.
        Returns {weight: NDCG@10}; {} without candidates or relevant held-out ratings."""
        cfg = self.config
        if not cfg.rerank_weights or self.ranking_head is None:
            return {}
        relevant = metrics.relevance(sp.csr_matrix(held_out))  # (U, I)
        users = np.flatnonzero(relevant.any(axis=1))
        if users.size == 0:
            return {}
        weights = sorted({0.0, *cfg.rerank_weights})
        per: dict[float, list[np.ndarray]] = {w: [] for w in weights}
        for start in range(0, users.size, 256):
            rows = users[start : start + 256]
            block = sp.csr_matrix(train)[rows]
            for w in weights:
                cfg.rerank_weight = w
                cols, vals = self.top_k_csr(block, 10)
                ranked = ranks_as_scores(cols, vals, self.n_items)
                per[w].append(metrics.ndcg_at_k(ranked, relevant[rows], 10))
        per_user = {w: np.concatenate(v) for w, v in per.items()}
        results = {w: float(np.nanmean(v)) for w, v in per_user.items()}
        best = max((w for w in weights if w > 0), key=lambda w: (results[w], -w))
        harmful = _clearly_better(per_user[0.0], per_user[best])
        cfg.rerank_weight = 0.0 if harmful else best
        return results

    def encode_sparse(self, indices: Tensor, values: Tensor, offsets: Tensor) -> SparseUsers:
        """Everything about B users of a packed sparse batch (see ``forward_sparse``) that the
        outputs read: the decoded hidden layer, the user offsets, the residuals, the EASE
        scores and the item-code dual coefficients."""
        cfg = self.config
        indices = indices.long()
        offsets = offsets.long()
        n_b, n = offsets.numel(), indices.numel()
        values = values.to(self.input_bias.dtype)
        codes_on = self._codes_active()
        if n_b == 1:  # one user: no segment arithmetic
            seg, lengths = indices.new_zeros(n), [n]  # (N,)
            count = values.new_full((1, 1), n)  # (B, 1)
        else:
            counts = torch.diff(offsets, append=offsets.new_tensor([n]))  # (B,)
            seg = torch.repeat_interleave(counts)  # (N,)
            lengths = counts.tolist() if codes_on else []
            count = counts.to(values.dtype).unsqueeze(1)
        user_bias, resid = self._residuals(indices, values, seg, count)
        scale = count.clamp_min(1.0).rsqrt() if cfg.normalise else torch.ones_like(count)
        scale_n = _per_entry(scale, seg, n)  # (N,)
        h = self._first_layer_sparse(indices, offsets, n_b, resid * scale_n, scale_n)
        wide = None
        ease = self.wide
        if ease is not None:
            wide = F.embedding_bag(indices, ease, offsets, mode="sum")  # (B, I)
            if not self._zero_diagonal(ease):
                diag = torch.diagonal(ease).index_select(0, indices)  # (N,)
                wide = wide.index_put((seg, indices), -diag, accumulate=True)
        code_alpha = None
        if codes_on:
            assert self.item_code is not None
            code_alpha = fold_in_duals(
                self.item_code,
                indices,
                resid,
                lengths,
                cfg.item_code_lambda,
                self._item_code_gram(),
            )  # (N,)
        return SparseUsers(
            hidden=self._hidden(h),
            user_bias=user_bias,
            resid=resid,
            indices=indices,
            offsets=offsets,
            seg=seg,
            wide=wide,
            code_alpha=code_alpha,
        )

    def _residuals(
        self, indices: Tensor, values: Tensor, seg: Tensor, count: Tensor
    ) -> tuple[Tensor | None, Tensor]:
        """User offsets (B, 1) (None without the baseline) and residuals (N,) of packed
        ratings of users ``seg`` with ``count`` (B, 1) ratings each."""
        if not self.config.baseline:
            return None, values
        dev = values - self.global_mean - self.item_bias.index_select(0, indices)  # (N,)
        sums = values.new_zeros(count.shape[0]).index_add_(0, seg, dev)  # (B,)
        user_bias = user_offset(sums.unsqueeze(1), count, self.config.user_bias_reg)  # (B, 1)
        return user_bias, dev - _per_entry(user_bias, seg, dev.numel())

    def code_vectors(self, users: SparseUsers) -> Tensor | None:
        """(B, d) item-code user vectors w_u = H_Rᵀ α_u of encoded users (None when that path
        is off)."""
        if users.code_alpha is None or self.item_code is None:
            return None
        return F.embedding_bag(
            users.indices,
            self.item_code.float(),
            users.offsets,
            mode="sum",
            per_sample_weights=users.code_alpha,
        )

    def _ridge_rows(self, users: SparseUsers) -> Tensor:
        """(B, I) residual-ridge term of encoded users before its gain: their residuals times
        the rows of their rated movies, zero diagonal."""
        ridge = self.wide_rating
        assert ridge is not None
        rated, resid = users.indices, users.resid
        rows = F.embedding_bag(rated, ridge, users.offsets, mode="sum", per_sample_weights=resid)
        if not self._zero_diagonal(ridge):
            diag = torch.diagonal(ridge).index_select(0, rated) * resid  # (N,)
            rows = rows.index_put((users.seg, rated), -diag, accumulate=True)
        return rows

    def _full_ratings(self, users: SparseUsers) -> Tensor:
        """(B, I) unclamped predicted ratings of encoded users over the whole catalogue."""
        pred = self.rating_head(users.hidden)  # (B, I)
        if users.user_bias is not None:
            pred = pred + (self.global_mean + self.item_bias + users.user_bias)
        if self.wide_rating is not None and self.wide_rating_gain is not None:
            pred = pred + self.wide_rating_gain * self._ridge_rows(users)
        code_w = self.code_vectors(users)
        if code_w is not None and self.item_code is not None:
            assert self.item_code_gain is not None
            codes = code_w @ self.item_code.float().T  # (B, I)
            pred = pred + self.item_code_gain * codes.to(pred.dtype)
        return pred

    def _heads(
        self, ratings: Tensor, mask: Tensor, training_logits: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Unclamped predicted ratings (B, I) and ranking scores (B, I) of a dense batch; with
        ``training_logits`` the logits the ranking loss is computed on."""
        m = mask.to(self.input_bias.dtype)  # (B, I)
        n = m.sum(1, keepdim=True)  # (B, 1)
        if self.config.baseline:
            dev = (ratings - self.global_mean - self.item_bias) * m  # (B, I)
            sums = dev.sum(1, keepdim=True)  # (B, 1)
            user_bias = user_offset(sums, n, self.config.user_bias_reg)  # (B, 1)
            resid = (dev - user_bias) * m  # (B, I)
            base = self.global_mean + self.item_bias + user_bias  # (B, I)
        else:
            resid, base = ratings * m, None
        scale = n.clamp_min(1.0).rsqrt() if self.config.normalise else torch.ones_like(n)  # (B, 1)
        h: Tensor = self.input_bias
        if self.w_rating is not None:
            h = h + (resid * scale) @ self.w_rating  # (B, h0)
        if self.w_binary is not None:
            h = h + (m * scale) @ self.w_binary  # (B, h0)
        wide = None
        if self.wide is not None:
            wide = m @ self.wide - m * torch.diagonal(self.wide)  # (B, I), zero diagonal
        if self.wide_rating is not None and self.wide_rating_gain is not None:
            assert base is not None  # the residual path exists only with the baseline
            # (B, I) residual from the other rated movies, zero diagonal
            wide_r = resid @ self.wide_rating - resid * torch.diagonal(self.wide_rating)
            base = base + self.wide_rating_gain * wide_r
        if self._codes_active():
            assert base is not None and self.item_code_gain is not None
            base = base + self.item_code_gain * self._dense_codes(resid, mask.to(torch.bool))
        return self._decode(h, base, wide, training_logits)

    def _decode(
        self, first: Tensor, base: Tensor | None, wide: Tensor | None, training_logits: bool
    ) -> tuple[Tensor, Tensor]:
        """From the first layer's pre-activation (B, h0) to (ratings (B, I), scores (B, I))."""
        h = self._hidden(first)
        pred = self.rating_head(h)  # (B, I)
        if base is not None:
            pred = pred + base
        if self.ranking_head is None:
            return pred, pred
        return pred, self._scores(h, wide, training_logits)

    def _hidden(self, first: Tensor) -> Tensor:
        """The decoded layer (B, h0) both heads read, from the first layer's pre-activation."""
        h = self.act(first)
        for layer in self.encoder:
            h = self.act(layer(h))
        if self.training:  # (dropout is the identity in eval mode)
            h = self.code_dropout(h)  # (B, code)
        for layer in self.decoder:
            h = self.act(layer(h))  # back to (B, h0)
        return h

    def _scores(self, h: Tensor, wide: Tensor | None, training_logits: bool) -> Tensor:
        """Ranking scores (B, I) from the decoded layer and the EASE scores (if any)."""
        assert self.ranking_head is not None
        cfg = self.config
        if wide is not None and not training_logits and cfg.wide_mix == 0:
            return wide  # EASE alone: 0 · the deep head's (finite) log-probabilities adds 0
        scores = self.ranking_head(h)  # (B, I)
        if wide is None:
            return scores
        if training_logits:
            return scores  # the deep head learns on its own
        return wide + cfg.wide_mix * F.log_softmax(scores, dim=1)

    # -------------------------------------------------------------------- objective
    def loss(self, ratings: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Training objective on a batch: rating_weight × masked MSE over the observed ratings +
        ranking_weight × ranking loss over all movies. In train mode a random
        ``input_dropout`` share of each user's ratings is hidden from the input (denoising) while
        every observed rating stays a target. Returns (loss, named parts for logging)."""
        m = mask.to(self.input_bias.dtype)  # (B, I)
        keep = mask
        if self.training and self.config.input_dropout > 0:
            keep = mask & (torch.rand_like(m) >= self.config.input_dropout)
        pred, scores = self._heads(ratings * keep, keep, training_logits=True)
        n_obs = m.sum().clamp_min(1.0)
        rating_loss = ((pred - ratings) ** 2 * m).sum() / n_obs
        total = self.config.rating_weight * rating_loss
        parts = {"rating_mse": float(rating_loss.detach())}
        if self.ranking_head is not None and self.config.ranking_weight > 0:
            ranking_loss = self._ranking_loss(scores, m)
            total = total + self.config.ranking_weight * ranking_loss
            parts["ranking"] = float(ranking_loss.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    def sparse_training(self) -> bool:
        """Whether ``loss_sparse`` computes this model's objective: true unless a path that
        reads whole (B, I) rows in training is on (the EASE or residual-ridge wide paths, an
        active item-code path)."""
        return self.wide is None and self.wide_rating is None and not self._codes_active()

    def loss_sparse(
        self, indices: Tensor, values: Tensor, offsets: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``loss`` of a packed sparse batch (user b rated the movie columns
        ``indices[offsets[b]:offsets[b+1]]`` with ``values[...]``, each movie at most once),
        for models where ``sparse_training()`` holds: the same objective and gradients up to
        float rounding, and the same random draws (the input-dropout draw is still one per
        (user, movie) cell, read at the rated cells).

        Only the rated movies are touched where the dense objective multiplies by the mask:
        the first layer is an embedding bag over the rated rows of its weights, the masked
        rating MSE reads the rating head's rows of the rated movies (no (B, I) rating output),
        and the ranking loss gathers the log-softmax at the rated cells; only the ranking
        head's (B, I) logits remain dense (the log-softmax needs every movie)."""
        if not self.sparse_training():
            raise ValueError("this model's objective reads dense rows: use loss()")
        cfg = self.config
        indices = indices.long()
        offsets = offsets.long()
        n_b = offsets.numel()
        dtype = self.input_bias.dtype
        values = values.to(dtype)
        lengths = torch.diff(offsets, append=offsets.new_tensor([indices.numel()]))  # (B,)
        seg = torch.repeat_interleave(torch.arange(n_b, device=indices.device), lengths)  # (N,)
        keep = torch.ones_like(values)  # (N,) 1 = shown to the encoder
        if self.training and cfg.input_dropout > 0:
            draws = torch.rand(n_b, self.n_items, dtype=dtype, device=values.device)  # (B, I)
            keep = (draws[seg, indices] >= cfg.input_dropout).to(dtype)
        n_keep = values.new_zeros(n_b).index_add_(0, seg, keep).unsqueeze(1)  # (B, 1)
        shown = values * keep  # (N,)
        base = None
        if cfg.baseline:
            dev = (shown - self.global_mean - self.item_bias[indices]) * keep  # (N,)
            sums = values.new_zeros(n_b).index_add_(0, seg, dev)
            user_bias = user_offset(sums.unsqueeze(1), n_keep, cfg.user_bias_reg)  # (B, 1)
            resid = (dev - user_bias[seg, 0]) * keep  # (N,)
            base = self.global_mean + self.item_bias[indices] + user_bias[seg, 0]  # (N,)
        else:
            resid = shown
        scale = n_keep.clamp_min(1.0).rsqrt() if cfg.normalise else torch.ones_like(n_keep)
        h = self._first_layer_sparse(
            indices, offsets, n_b, resid * scale[seg, 0], keep * scale[seg, 0]
        )
        hidden = self._hidden(h)  # (B, h0)
        head = self.rating_head
        rows = F.embedding(indices, head.weight)  # (N, h0) the rated movies' output rows
        pred = (hidden[seg] * rows).sum(1) + head.bias[indices]  # (N,)
        if base is not None:
            pred = pred + base
        n_obs = max(indices.numel(), 1)
        rating_loss = (pred - values).square().sum() / n_obs
        total = cfg.rating_weight * rating_loss
        parts = {"rating_mse": float(rating_loss.detach())}
        if self.ranking_head is not None and cfg.ranking_weight > 0:
            scores = self.ranking_head(hidden)  # (B, I)
            n = lengths.to(dtype).clamp_min(1.0)  # (B,)
            if cfg.ranking_loss == "multinomial":
                picked = F.log_softmax(scores, dim=1)[seg, indices]  # (N,)
                per_user = picked.new_zeros(n_b).index_add_(0, seg, picked)
                ranking_loss = -(per_user / n).mean()
            else:
                m = torch.zeros_like(scores)
                m[seg, indices] = 1.0
                ranking_loss = self._ranking_loss(scores, m)
            total = total + cfg.ranking_weight * ranking_loss
            parts["ranking"] = float(ranking_loss.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    def _ranking_loss(self, scores: Tensor, m: Tensor) -> Tensor:
        """Objective over all movies of the binarised row ``m`` (B, I)."""
        n = m.sum(1).clamp_min(1.0)  # (B,)
        # Mult-DAE log-likelihood, per user averaged over the rated movies.
        return -((F.log_softmax(scores, dim=1) * m).sum(1) / n).mean()

    # -------------------------------------------------------------------- representations
    def item_embeddings(self) -> Tensor:
        """(I, h0) learned movie representations: the rows of the ranking head (the rating
        head when there is no ranking head). "Similar movies" use their cosine only for a
        checkpoint without an item–item part (see ``similar``)."""
        head = self.ranking_head if self.ranking_head is not None else self.rating_head
        return head.weight.detach()

    def similar(self, col: int, n: int) -> tuple[Tensor, Tensor] | None:
        """The (at most) ``n`` movies most similar to movie ``col`` by the item–item part, best
        first, never ``col`` itself: (columns, scores). With EASE, the largest entries of its
        column of weights, B[:, col] — how much having rated each movie raises the score of
        ``col``; without it (catalogues above ``wide_max_items``, the tutorial model), the
        stored nearest movies by cosine over the rating matrix (``cosine_neighbours``). Measured
        on MovieLens-100K series (``bench/similar_films.py``), both find a film's sequels far
        better than the cosine of the ranking head's rows. None for a model with neither (a
        checkpoint written before the neighbours were stored)."""
        if self.wide is not None:
            sims = self.wide.detach()[:, col].float().clone()  # (I,)
            sims[col] = -torch.inf
            top = torch.topk(sims, min(n, self.n_items - 1))
            return top.indices, top.values
        if self.similar_cols is not None and self.similar_weights is not None:
            cols = self.similar_cols[col]  # (k,)
            found = cols >= 0
            return cols[found][:n], self.similar_weights[col][found][:n].float()
        return None
