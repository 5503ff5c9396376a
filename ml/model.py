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
  log-likelihood of the binarised row (Mult-DAE) or a weighted reconstruction of the binary row.
  A *wide* linear path — an item × item matrix with a zero diagonal applied to the binary row,
  the closed-form EASE solution of the training matrix — sits beside the deep stack: by default
  (``wide_mode="ensemble"``) the deep head learns on its own and the served score is
  ``EASE score + wide_mix · log-softmax(deep logits)``; with ``wide_mode="sum"`` the two logits
  are added and trained together.
* A second wide path feeds the rating head: an item × item ridge regression (zero diagonal) of a
  user's residual ratings on the other residuals, solved in closed form from the training matrix,
  with a learned gain.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "selu": nn.SELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
RANKING_LOSSES = ("multinomial", "weighted_mse", "none")


@dataclass
class ModelConfig:
    """Every knob of the autoencoder; the defaults are the best measured on MovieLens-100K
    validation data (see docs/model.md)."""

    hidden: tuple[int, ...] = (256,)  # encoder sizes, input side first; the decoder mirrors them
    activation: str = "tanh"  # one of ACTIVATIONS, applied after every hidden layer
    dropout: float = 0.5  # dropout on the code (the innermost layer), train mode only
    input_dropout: float = 0.5  # denoising: fraction of a user's ratings hidden from the input
    tied: bool = False  # decoder layers reuse the transposed encoder weights
    baseline: bool = True  # rating head predicts residuals on global mean + movie + user biases
    item_bias_reg: float = 5.0  # shrinkage of movie biases toward 0 (pseudo-ratings)
    user_bias_reg: float = 3.0  # shrinkage of the user offset computed from the input row
    rating_input: bool = True  # feed the (residual) ratings to the encoder
    binary_input: bool = True  # feed the binary "has rated" row to the encoder
    normalise: bool = True  # scale input rows by 1/sqrt(#ratings of the user)
    wide: bool = True  # item × item linear path (zero diagonal) on the binary row → ranking
    wide_lambda: float = 500.0  # L2 of the closed-form EASE solution that initialises it
    wide_trainable: bool = False  # fine-tune the wide path (else it stays the EASE solution)
    wide_mode: str = "ensemble"  # "sum": wide + deep logits trained together; "ensemble": the
    # deep ranking head is trained alone (Mult-DAE) and served as wide + wide_mix · log-softmax
    wide_gain: float = 10.0  # "sum": initial value of the learned scale of the wide logits
    wide_mix: float = 0.05  # "ensemble": weight of the deep log-probabilities beside EASE
    wide_max_items: int = 8000  # no wide paths above this catalogue size (I × I weights)
    wide_rating: bool = True  # item × item linear path (zero diagonal) on residuals → ratings
    wide_rating_lambda: float = 1000.0  # L2 of its closed-form ridge solution (see from_data)
    wide_rating_gain: float = 4.0  # initial learned scale of that path (the ridge fit shrinks)
    ranking_loss: str = "multinomial"  # "multinomial", "weighted_mse" or "none"
    negative_weight: float = 0.1  # weighted_mse: weight of an unrated movie vs a rated one
    rating_weight: float = 10.0  # weight of the masked rating MSE in the objective
    ranking_weight: float = 1.0  # weight of the ranking objective
    refeed: bool = False  # DeepRecommender dense re-feeding: a second pass on the predictions

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(
                f"hidden must be a non-empty list of positive sizes, got {self.hidden}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        if self.ranking_loss not in RANKING_LOSSES:
            raise ValueError(
                f"unknown ranking_loss {self.ranking_loss!r}; choose one of {RANKING_LOSSES}"
            )
        for name in ("dropout", "input_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not (self.rating_input or self.binary_input):
            raise ValueError("at least one of rating_input and binary_input must be on")
        if self.wide_mode not in ("sum", "ensemble"):
            raise ValueError(f"wide_mode must be 'sum' or 'ensemble', got {self.wide_mode!r}")
        if self.rating_weight < 0 or self.ranking_weight < 0:
            raise ValueError("loss weights must be non-negative")

    @classmethod
    def tutorial(cls) -> ModelConfig:
        """The tutorial's model: 20-10-20 sigmoid on raw ratings, MSE on rated entries only."""
        return cls(
            hidden=(20, 10),
            activation="sigmoid",
            dropout=0.0,
            input_dropout=0.0,
            rating_weight=1.0,
            baseline=False,
            binary_input=False,
            normalise=False,
            wide=False,
            wide_rating=False,
            ranking_loss="none",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**values)


def ease_weights(train: sp.csr_matrix, lam: float) -> np.ndarray:
    """Closed-form EASE (Steck 2019) on the binarised matrix: B = I - P / diag(P),
    P = (XᵀX + λI)⁻¹; the diagonal of B is exactly zero. Returns (I, I) float32."""
    x = (train > 0).astype(np.float64)
    gram = (x.T @ x).toarray()  # (I, I)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


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


def residual_matrix(
    train: sp.csr_matrix, mu: float, item_bias: np.ndarray, user_reg: float
) -> sp.csr_matrix:
    """Observed ratings minus the model's baseline μ + b_i + b_u (b_u shrunk by ``user_reg``,
    computed from the row exactly as the forward pass does)."""
    coo = sp.coo_matrix(train, dtype=np.float64)
    dev = coo.data - mu - item_bias[coo.col]  # (nnz,)
    counts = np.bincount(coo.row, minlength=train.shape[0])
    user_bias = np.bincount(coo.row, dev, minlength=train.shape[0]) / (counts + user_reg)
    return sp.csr_matrix((dev - user_bias[coo.row], (coo.row, coo.col)), shape=train.shape)


def ridge_item_weights(resid: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's closed form on residual ratings: W = argmin ‖R − RW‖² + λ‖W‖², diag(W) = 0,
    treating an unobserved residual as 0 (its expectation). (I, I) float32."""
    gram = (resid.T @ resid).toarray()  # (I, I)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    w = -p / np.diag(p)[None, :]
    w[np.diag_indices_from(w)] = 0.0
    return w.astype(np.float32)


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
        # Decoder mirrors the encoder; tied: only biases of its own, weights are the encoder's.
        self.decoder = nn.ModuleList(nn.Linear(b, a) for a, b in reversed(pairs) if not config.tied)
        self.decoder_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(a)) for a, _ in reversed(pairs) if config.tied
        )
        self.rating_head = nn.Linear(first, n_items)
        self.ranking_head = nn.Linear(first, n_items) if config.ranking_loss != "none" else None
        if self.ranking_head is not None and self._has_wide() and config.wide_mode == "sum":
            # The deep ranking path starts silent: training begins at the EASE ranking and the
            # deep stack only adds what the validation data rewards.
            nn.init.zeros_(self.ranking_head.weight)
            nn.init.zeros_(self.ranking_head.bias)
        self.wide = (
            nn.Parameter(torch.zeros(n_items, n_items), requires_grad=config.wide_trainable)
            if self._has_wide()
            else None
        )
        # Learned gain of the wide path: the multinomial objective wants sharper logits than the
        # least-squares EASE solution gives.
        self.wide_gain = (
            nn.Parameter(torch.tensor(float(config.wide_gain)))
            if self._has_wide() and config.wide_mode == "sum"
            else None
        )
        has_wide_rating = (
            config.wide_rating and config.baseline and n_items <= config.wide_max_items
        )
        self.wide_rating = (
            nn.Parameter(torch.zeros(n_items, n_items), requires_grad=config.wide_trainable)
            if has_wide_rating
            else None
        )
        self.wide_rating_gain = (
            nn.Parameter(torch.tensor(float(config.wide_rating_gain))) if has_wide_rating else None
        )

    def _has_wide(self) -> bool:
        cfg = self.config
        return cfg.wide and cfg.ranking_loss != "none" and self.n_items <= cfg.wide_max_items

    # -------------------------------------------------------------------- construction
    @classmethod
    def from_data(cls, train: sp.csr_matrix, config: ModelConfig) -> Autoencoder:
        """A fresh model sized for ``train`` with its statistics (global mean, movie biases,
        rating scale, EASE wide path) computed from the training ratings."""
        if not sp.issparse(train):
            raise TypeError("train must be a scipy.sparse CSR matrix")
        train = sp.csr_matrix(train, dtype=np.float32)
        if config.wide and train.shape[1] > config.wide_max_items:
            logger.warning(
                "catalogue of %d movies exceeds wide_max_items=%d: no wide path",
                train.shape[1],
                config.wide_max_items,
            )
        model = cls(train.shape[1], config)
        mu, item_bias = bias_statistics(train, config.item_bias_reg)
        with torch.no_grad():
            model.global_mean.fill_(mu)
            model.item_bias.copy_(torch.from_numpy(item_bias))
            model.rating_min.fill_(float(train.data.min()))
            model.rating_max.fill_(float(train.data.max()))
            if model.wide is not None:
                model.wide.copy_(torch.from_numpy(ease_weights(train, config.wide_lambda)))
            if model.wide_rating is not None:
                resid = residual_matrix(train, mu, item_bias, config.user_bias_reg)
                weights = ridge_item_weights(resid, config.wide_rating_lambda)
                model.wide_rating.copy_(torch.from_numpy(weights))
        return model

    def architecture(self) -> dict[str, Any]:
        """JSON-serialisable arguments that rebuild an empty module of the same shape."""
        return {"kind": "autoencoder", "n_items": self.n_items, "config": self.config.to_dict()}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> Autoencoder:
        """Empty module described by ``architecture()``; weights come from load_state_dict."""
        if arch.get("kind", "autoencoder") != "autoencoder":
            raise ValueError(f"not an autoencoder architecture: {arch.get('kind')!r}")
        try:
            return cls(int(arch["n_items"]), ModelConfig.from_dict(dict(arch["config"])))
        except KeyError as exc:
            raise ValueError(f"architecture lacks {exc.args[0]!r}") from exc

    # -------------------------------------------------------------------- forward
    def forward(self, ratings: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Ratings (B, I) with 0 where ``mask`` is False → (predicted ratings (B, I) clamped to the
        rating scale, ranking scores (B, I)). Higher score = better recommendation."""
        pred, scores = self._heads(ratings, mask)
        pred = pred.clamp(self.rating_min, self.rating_max)
        return pred, (pred if self.ranking_head is None else scores)

    def forward_sparse(
        self, indices: Tensor, values: Tensor, offsets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The same as ``forward`` for B users given as a packed sparse batch: user b rated the
        movie columns ``indices[offsets[b]:offsets[b+1]]`` with ``values[...]`` (each movie at
        most once per user). The first layer and the wide path only read the rated movies'
        weights — the serving path for large catalogues."""
        indices = indices.long()
        offsets = offsets.long()
        n_b = offsets.numel()
        values = values.to(self.input_bias.dtype)
        lengths = torch.diff(offsets, append=offsets.new_tensor([indices.numel()]))  # (B,)
        seg = torch.repeat_interleave(torch.arange(n_b, device=indices.device), lengths)  # (N,)
        n = lengths.to(values.dtype).unsqueeze(1)  # (B, 1)
        if self.config.baseline:
            dev = values - self.global_mean - self.item_bias[indices]  # (N,)
            sums = torch.zeros(n_b, dtype=values.dtype, device=values.device).index_add_(
                0, seg, dev
            )
            user_bias = sums.unsqueeze(1) / (n + self.config.user_bias_reg)  # (B, 1)
            resid = dev - user_bias[seg, 0]  # (N,)
            base = self.global_mean + self.item_bias + user_bias  # (B, I)
        else:
            resid, base = values, None
        scale = n.clamp_min(1.0).rsqrt() if self.config.normalise else torch.ones_like(n)  # (B, 1)
        h = self.input_bias.expand(n_b, -1)
        if self.w_rating is not None:
            h = h + F.embedding_bag(
                indices,
                self.w_rating,
                offsets,
                mode="sum",
                per_sample_weights=resid * scale[seg, 0],
            )
        if self.w_binary is not None:
            h = h + F.embedding_bag(
                indices, self.w_binary, offsets, mode="sum", per_sample_weights=scale[seg, 0]
            )
        wide = None
        if self.wide is not None:
            wide = F.embedding_bag(indices, self.wide, offsets, mode="sum")  # (B, I)
            diag = self.wide[indices, indices]  # (N,)
            wide = wide.index_put((seg, indices), -diag, accumulate=True)
        if self.wide_rating is not None and self.wide_rating_gain is not None:
            assert base is not None  # the residual path exists only with the baseline
            wide_r = F.embedding_bag(
                indices, self.wide_rating, offsets, mode="sum", per_sample_weights=resid
            )  # (B, I)
            diag = self.wide_rating[indices, indices] * resid  # (N,)
            wide_r = wide_r.index_put((seg, indices), -diag, accumulate=True)
            base = base + self.wide_rating_gain * wide_r
        pred, scores = self._decode(h, base, wide, training_logits=False)
        pred = pred.clamp(self.rating_min, self.rating_max)
        return pred, (pred if self.ranking_head is None else scores)

    def _heads(
        self, ratings: Tensor, mask: Tensor, training_logits: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Unclamped predicted ratings (B, I) and ranking scores (B, I) of a dense batch; with
        ``training_logits`` the logits the ranking loss is computed on."""
        m = mask.to(self.input_bias.dtype)  # (B, I)
        n = m.sum(1, keepdim=True)  # (B, 1)
        if self.config.baseline:
            dev = (ratings - self.global_mean - self.item_bias) * m  # (B, I)
            user_bias = dev.sum(1, keepdim=True) / (n + self.config.user_bias_reg)  # (B, 1)
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
        return self._decode(h, base, wide, training_logits)

    def _decode(
        self, first: Tensor, base: Tensor | None, wide: Tensor | None, training_logits: bool
    ) -> tuple[Tensor, Tensor]:
        """From the first layer's pre-activation (B, h0) to (ratings (B, I), scores (B, I))."""
        h = self.act(first)
        for layer in self.encoder:
            h = self.act(layer(h))
        h = self.code_dropout(h)  # (B, code)
        if self.config.tied:
            for enc, bias in zip(reversed(self.encoder), self.decoder_bias, strict=True):
                assert isinstance(enc, nn.Linear)
                h = self.act(F.linear(h, enc.weight.t(), bias))
        else:
            for layer in self.decoder:
                h = self.act(layer(h))  # back to (B, h0)
        pred = self.rating_head(h)  # (B, I)
        if base is not None:
            pred = pred + base
        if self.ranking_head is None:
            return pred, pred
        scores = self.ranking_head(h)  # (B, I)
        if wide is None:
            return pred, scores
        if self.config.wide_mode == "sum":
            assert self.wide_gain is not None
            return pred, scores + self.wide_gain * wide
        if training_logits:
            return pred, scores  # the deep head learns on its own
        return pred, wide + self.config.wide_mix * F.log_softmax(scores, dim=1)

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
        if self.config.refeed and self.training:
            refeed_loss = self._refeed_loss(pred.detach())
            total = total + self.config.rating_weight * refeed_loss
            parts["refeed_mse"] = float(refeed_loss.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    def _ranking_loss(self, scores: Tensor, m: Tensor) -> Tensor:
        """Objective over all movies of the binarised row ``m`` (B, I)."""
        n = m.sum(1).clamp_min(1.0)  # (B,)
        if self.config.ranking_loss == "multinomial":
            # Mult-DAE log-likelihood, per user averaged over the rated movies.
            return -((F.log_softmax(scores, dim=1) * m).sum(1) / n).mean()
        weight = m + self.config.negative_weight * (1.0 - m)  # (B, I)
        return ((scores - m) ** 2 * weight).sum(1).div(n).mean()

    def _refeed_loss(self, dense: Tensor) -> Tensor:
        """DeepRecommender's dense re-feeding: the (detached) prediction is a fully observed row,
        so the model should reproduce it from itself."""
        full = torch.ones_like(dense, dtype=torch.bool)
        pred, _ = self._heads(dense, full)
        return ((pred - dense) ** 2).mean()

    # -------------------------------------------------------------------- representations
    def item_embeddings(self) -> Tensor:
        """(I, h0) learned movie representations for "similar movies": the rows of the ranking
        head (the rating head when there is no ranking head)."""
        head = self.ranking_head if self.ranking_head is not None else self.rating_head
        return head.weight.detach()
