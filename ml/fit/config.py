"""Every knob of training in :class:`TrainConfig` (the model's own in ``ModelConfig``), the
presets, and overrides from a file or flags."""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.model import ModelConfig


@dataclass
class TrainConfig:
    """Every knob of the training loop (the model's own knobs are in ``model``)."""

    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 64  # users per optimisation step (global, across DDP processes)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-2  # AdamW decoupled decay (RMSprop: L2 added to the gradient)
    optimizer: str = "adamw"  # "adamw" or "rmsprop" (the tutorial's)
    schedule: str = "cosine"  # "cosine" (linear warmup, cosine decay to 0) or "constant"
    warmup_frac: float = 0.05  # share of all steps spent warming up (cosine schedule)
    grad_clip: float = 5.0  # max gradient norm; 0 disables clipping
    patience: int = 8  # epochs without a better validation score before stopping; 0 = never
    # Early stopping watches "rmse", "ndcg@10" or "auto" (ndcg@10 if the model ranks, else rmse).
    # rmse by default: the ranking is the closed-form EASE path plus a correction whose weight
    # `finish` chooses afterwards, so the epochs matter for the rating head (MovieLens-100K,
    # 5 % validation: RMSE 0.9004 and NDCG@10 0.2900 with rmse; 0.9052 and 0.2900 with auto).
    monitor: str = "rmse"
    seed: int = 0  # one seed → the same split, initialisation, order and weights (on CPU)
    val_frac: float = 0.05  # share of each user's ratings held out for validation
    eval_batch_size: int = 512  # users per validation forward pass
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    threads: int = 0  # CPU threads for torch during fit; 0 keeps torch's default (tiny models: 1)
    zero_grad: bool = True  # False: gradients accumulate over every step (the tutorial's loop)
    progress: bool = True  # tqdm bar over the batches of each epoch
    log_file: str | None = None  # JSON lines of per-epoch metrics; None → stdout
    preset: str = "default"  # name of the preset these values started from
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be positive")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError(f"optimizer must be 'adamw' or 'rmsprop', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.monitor not in ("auto", "ndcg@10", "rmse"):
            raise ValueError(f"monitor must be auto, ndcg@10 or rmse, got {self.monitor!r}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ValueError(f"val_frac must be in [0, 1), got {self.val_frac}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (recorded in the checkpoint manifest)."""
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out


def _seed_preset() -> TrainConfig:
    """The classic tutorial: 20-10-20 sigmoid, RMSprop lr 0.01 with L2 0.5, one user per step,
    200 epochs, MSE on the rated entries only; no early stopping.

    The tutorial's loop never clears gradients, so each step applies the sum of every gradient
    so far; that is what lets it learn at all under an L2 of 0.5 (with cleared gradients the
    decay pulls every weight and bias to zero: validation RMSE 2.77 on MovieLens-100K).
    ``zero_grad=False`` reproduces it."""
    return TrainConfig(
        epochs=200,
        batch_size=1,
        lr=0.01,
        weight_decay=0.5,
        optimizer="rmsprop",
        schedule="constant",
        grad_clip=0.0,
        patience=0,
        threads=1,  # steps of one user are too small to share between threads
        zero_grad=False,  # as the tutorial: gradients accumulate over all steps
        monitor="rmse",
        preset="seed",
        model=ModelConfig.tutorial(),
    )


def _fast_preset() -> TrainConfig:
    """The default without the item-code path: no item-row autoencoder to train and no
    per-request fold-in (a Cholesky solve over each user's rated movies, the largest part of
    scoring a user on MovieLens-100K). Cheaper to serve and to train, at a higher rating error
    (figures in docs/model.md); the ranking keeps the default's EASE scores and re-ranking."""
    return TrainConfig(preset="fast", model=ModelConfig(item_codes=0))


PRESETS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    "fast": _fast_preset(),
    "seed": _seed_preset(),
}


def preset(name: str) -> TrainConfig:
    """A fresh copy of the preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def with_overrides(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``base`` with some fields replaced; a ``model`` table overrides ModelConfig fields.

    Unknown keys are an error naming them, so a typo in a config file never goes unnoticed.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)}")
    values = {k: v for k, v in overrides.items() if k != "model"}
    model = base.model
    if "model" in overrides:
        if not isinstance(overrides["model"], dict):
            raise ValueError("'model' overrides must be a table of ModelConfig fields")
        model = ModelConfig.from_dict({**base.model.to_dict(), **overrides["model"]})
    return dataclasses.replace(base, **values, model=model)


def read_config_file(path: Path) -> dict[str, Any]:
    """Overrides from a JSON (``.json``) or TOML (any other suffix) file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of TrainConfig fields")
    return data
