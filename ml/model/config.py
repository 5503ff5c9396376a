"""Every knob of the model in one dataclass, :class:`ModelConfig`, with a default and a comment
each; the removed modes a checkpoint may still name (``RETIRED``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

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
RANKING_LOSSES = ("multinomial", "none")
# Modes of earlier versions, removed because no default used them and no measurement favoured
# them (docs/model.md): a checkpoint written with one of them on is refused with a message to
# retrain; one written with its old default loads as before, the key dropped. None: any value
# (the knob only acted inside a removed mode).
RETIRED: dict[str, Any] = {
    "tied": False,
    "refeed": False,
    "wide_trainable": False,
    "wide_mode": "ensemble",
    "wide_gain": None,
    "negative_weight": None,
}


@dataclass
class ModelConfig:
    """Every knob of the autoencoder; the defaults are the best measured on MovieLens-100K
    validation data (see docs/model.md)."""

    hidden: tuple[int, ...] = (256,)  # encoder sizes, input side first; the decoder mirrors them
    activation: str = "tanh"  # one of ACTIVATIONS, applied after every hidden layer
    dropout: float = 0.5  # dropout on the code (the innermost layer), train mode only
    input_dropout: float = 0.5  # denoising: fraction of a user's ratings hidden from the input
    baseline: bool = True  # rating head predicts residuals on global mean + movie + user biases
    item_bias_reg: float = 5.0  # shrinkage of movie biases toward 0 (pseudo-ratings)
    user_bias_reg: float = 3.0  # shrinkage of the user offset computed from the input row
    rating_input: bool = True  # feed the (residual) ratings to the encoder
    binary_input: bool = True  # feed the binary "has rated" row to the encoder
    normalise: bool = True  # scale input rows by 1/sqrt(#ratings of the user)
    wide: bool = True  # item × item linear path (zero diagonal) on the binary row → ranking
    wide_lambda: float = 500.0  # L2 of the closed-form EASE solution (the tuned one, if tuned)
    wide_lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 350.0, 500.0, 750.0, 1000.0, 2000.0)
    # ^ candidates for wide_lambda, chosen by from_data on a validation slice; () = no tuning
    wide_mix: float = 0.05  # weight of the deep head's log-probabilities beside EASE
    wide_mixes: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05)  # candidates for wide_mix that
    # choose_wide_mix tries on held-out ratings the deep head never saw
    wide_max_items: int = 8000  # no wide paths above this catalogue size (I × I weights)
    wide_rating: bool = True  # item × item linear path (zero diagonal) on residuals → ratings
    wide_rating_lambda: float = 1000.0  # L2 of its closed-form ridge solution (see from_data)
    wide_rating_lambdas: tuple[float, ...] = ()  # candidates for wide_rating_lambda and its
    # initial gain, chosen on a validation slice; () = none (tuning them did not help, model.md)
    wide_rating_gain: float = 4.0  # initial learned scale of that path (the ridge fit shrinks)
    tune_frac: float = 0.2  # share of the training ratings held out to tune the two λ
    tune_seed: int = 0  # seed of that validation slice
    ranking_loss: str = "multinomial"  # "multinomial" (Mult-DAE) or "none" (no ranking head)
    rating_weight: float = 10.0  # weight of the masked rating MSE in the objective
    ranking_weight: float = 1.0  # weight of the ranking objective
    # Item-code rating path: an item-row autoencoder (one sigmoid layer over a movie's column of
    # ratings, linear decoder, masked MSE, L2) is trained by from_data; its codes h_i (I × d)
    # are frozen and a user's vector is folded in at inference time by ridge regression of the
    # user's residuals on the codes of the movies they rated. Its weight beside the other
    # rating paths is fitted by calibrate_rating_paths (0, the path unused, until then).
    # Similar films where EASE is off (catalogues above wide_max_items, the tutorial model):
    # each movie's `similar_k` nearest by cosine over the binary rating matrix, computed in
    # column chunks by from_data (no I × I matrix); 0 = none (checkpoints written before).
    similar_k: int = 50
    item_codes: int = 500  # code size d; 0 = no item-code path (also off above wide_max_items)
    item_code_lambda: float = 100.0  # L2 of the per-user ridge fold-in
    item_code_l2: float = 200.0  # L2 of the item autoencoder (AutoRec's scale: λ/2 · ‖W‖²)
    item_code_epochs: int = 20  # passes of Adam over the movies
    item_code_lr: float = 1e-3  # Adam's learning rate for the item autoencoder
    item_code_batch: int = 64  # movies per step
    item_code_max_cells: int = 50_000_000  # no item-code path when users × movies exceeds this
    # (the item autoencoder's cost and its encoder's size grow with the number of users)
    # Re-ranking: the best `rerank_candidates` movies of the ranking score are ordered again by
    # score + rerank_weight · log P(rating ≥ threshold), P from the predicted rating under a
    # normal spread `rerank_sigma` (the rating paths' RMSE on held-out ratings, set by
    # calibrate_rating_paths); only those candidates are rated. 0 = the ranking score's order.
    # choose_rerank sets the weight from `rerank_weights` on held-out ratings (docs/model.md).
    rerank_weight: float = 0.0
    rerank_weights: tuple[float, ...] = (0.1,)  # candidates (chosen on validation slices)
    rerank_candidates: int = 50  # K': how many of the best-scored movies are re-ranked
    rerank_threshold: float = 3.5  # a rating above it counts as liked (relevance = rating ≥ 4)
    rerank_sigma: float = 0.9  # spread of a rating around its prediction

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.wide_lambdas = tuple(float(v) for v in self.wide_lambdas)
        self.wide_mixes = tuple(float(v) for v in self.wide_mixes)
        self.rerank_weights = tuple(float(v) for v in self.rerank_weights)
        if min((self.rerank_weight, *self.rerank_weights)) < 0 or self.rerank_candidates < 1:
            raise ValueError("rerank weights must be >= 0 and rerank_candidates >= 1")
        if self.rerank_sigma <= 0:
            raise ValueError(f"rerank_sigma must be > 0, got {self.rerank_sigma}")
        if min((self.wide_mix, *self.wide_mixes)) < 0:
            raise ValueError("wide_mix and its candidates must be non-negative")
        self.wide_rating_lambdas = tuple(float(v) for v in self.wide_rating_lambdas)
        lambdas = (self.wide_lambda, self.wide_rating_lambda)
        if min((*lambdas, *self.wide_lambdas, *self.wide_rating_lambdas)) <= 0:
            raise ValueError(
                "every wide-path λ (wide_lambda(s), wide_rating_lambda(s)) must be > 0"
            )
        if not 0.0 < self.tune_frac < 1.0:
            raise ValueError(f"tune_frac must be in (0, 1), got {self.tune_frac}")
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
        if self.rating_weight < 0 or self.ranking_weight < 0:
            raise ValueError("loss weights must be non-negative")
        if self.similar_k < 0:
            raise ValueError(f"similar_k must be >= 0, got {self.similar_k}")
        if self.item_codes < 0 or self.item_code_epochs < 0 or self.item_code_batch < 1:
            raise ValueError("item_codes and item_code_epochs must be >= 0, item_code_batch >= 1")
        if self.item_code_lambda <= 0 or self.item_code_l2 < 0 or self.item_code_lr <= 0:
            raise ValueError("item_code_lambda and item_code_lr must be > 0, item_code_l2 >= 0")

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
            item_codes=0,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key in (
            "hidden",
            "wide_lambdas",
            "wide_rating_lambdas",
            "wide_mixes",
            "rerank_weights",
        ):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error, missing keys take defaults.

        Keys of removed modes (``RETIRED``) are dropped when they hold the value every earlier
        default had; a configuration that used a removed mode is refused with a message to
        retrain (also for a ranking loss that no longer exists)."""
        values = dict(values)
        for key, default in RETIRED.items():
            if key in values:
                value = values.pop(key)
                if default is not None and value != default:
                    raise ValueError(
                        f"{key}={value!r} is a mode this version no longer has (docs/model.md): "
                        "retrain the model with this version (movierec train)"
                    )
        if values.get("ranking_loss", "multinomial") not in RANKING_LOSSES:
            raise ValueError(
                f"ranking_loss={values['ranking_loss']!r} is a mode this version no longer has "
                "(docs/model.md): retrain the model with this version (movierec train)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**values)
