"""Training the autoencoder: mini-batches of users, validation, early stopping, checkpoints.

Read top to bottom: :class:`TrainConfig` and the presets, the learning-rate schedule, the
validation pass, :func:`fit` (one process or DDP), :func:`train_from_store` (store → checkpoint)
and the ``python -m ml.train`` entry point, which also runs under
``torchrun --nproc-per-node K -m ml.train ...``: with ``RANK``/``WORLD_SIZE`` set it trains with
DistributedDataParallel (NCCL on GPU, gloo on CPU), each process taking an interleaved shard of
the shuffled users (same number of batches per process), validation sums all-reduced, and only
rank 0 writing the checkpoint.

Batches are taken on the fly from the CSR matrix: packed sparse rows (:func:`ml.data.pack_rows`,
``Autoencoder.loss_sparse``) when the model's objective allows it (no wide or item-code path:
large catalogues), else dense (B x movies) blocks (:func:`ml.data.densify`); no dense
users x movies matrix is ever built.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import io
import json
import math
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ml import checkpoint
from ml.data import (
    DataError,
    RatingsData,
    densify,
    load_ratings,
    pack_rows,
    remap_columns,
    validation_split,
)
from ml.inference import resolve_device
from ml.model import Autoencoder, ModelConfig, ranks_as_scores

EpochCallback = Callable[[dict[str, Any]], None]
RELEVANT = 4.0  # a held-out rating >= this is relevant for NDCG (as in ml.metrics)
TOP_K = 10
EVAL_CELLS = 1 << 24  # largest (users x movies) block densified at once during validation


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


# ---------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    """This process's place in a DDP run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_dist() -> Dist:
    """The rank/world of an initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def shard(order: np.ndarray, batch_size: int, d: Dist) -> tuple[np.ndarray, int]:
    """This rank's users and per-rank batch size.

    ``order`` is padded by wrapping around (as DistributedSampler does) to a multiple of the
    world size, then dealt out interleaved: global batch k of a one-process run is exactly the
    union of batch k of every rank.
    """
    if not d.active:
        return order, batch_size
    per_rank = max(1, batch_size // d.world)
    padded_len = math.ceil(len(order) / d.world) * d.world
    padded = np.resize(order, padded_len)  # wraps around
    return padded[d.rank :: d.world], per_rank


def _all_reduce(values: list[float], device: torch.device, d: Dist) -> list[float]:
    """Element-wise sum over all ranks (a no-op for one process)."""
    if not d.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _Objective(nn.Module):
    """Calls ``model.loss`` (a dense batch: ratings, mask) or ``model.loss_sparse`` (a packed
    batch: indices, values, offsets) through ``forward`` so that DDP synchronises its
    gradients."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, *batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if len(batch) == 3:
            return self.model.loss_sparse(*batch)
        return self.model.loss(*batch)


def _wrap_ddp(objective: nn.Module, model: Autoencoder, device: torch.device) -> nn.Module:
    """DDP around the objective. Buffers are statistics of the data, identical on every rank,
    so they are not re-broadcast each step; unused-parameter detection is on only when a loss
    weight of zero leaves a head out of the graph."""
    cfg = model.config
    skips_a_head = cfg.rating_weight == 0 or (
        cfg.ranking_loss != "none" and cfg.ranking_weight == 0
    )
    ddp_args = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in ddp_args
        else {"broadcast_buffers": False}
    )
    return nn.parallel.DistributedDataParallel(
        objective,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=skips_a_head,
        **sync,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup then cosine to zero."""
    if config.schedule == "constant":
        return 1.0
    warmup = max(1, int(config.warmup_frac * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decay on matrices only) or the tutorial's RMSprop (L2 on everything)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, weight_decay=config.weight_decay)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:  # the fused kernel is about 4x faster than the per-tensor one, on CPU as on CUDA
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):  # older torch or an unsupported device
        return torch.optim.AdamW(groups, lr=config.lr)


# ---------------------------------------------------------------------------- validation
def _ndcg_recall_sums(
    scores: torch.Tensor, truth: torch.Tensor, truth_mask: torch.Tensor, k: int
) -> tuple[float, float, float]:
    """Sums over users of binary NDCG@k and recall@k, and the number of users counted.

    Same definitions as ``ml.metrics``: relevance = held-out rating >= 4, ideal DCG from
    min(k, #relevant), recall normalised by min(k, #relevant), users without a relevant
    held-out movie skipped. ``scores`` already has the training movies at -inf.
    """
    relevant = truth_mask & (truth >= RELEVANT)  # (B, I)
    n_rel = relevant.sum(1)  # (B,)
    k = min(k, scores.shape[1])
    top = torch.topk(scores, k, dim=1).indices  # (B, k)
    hits = relevant.gather(1, top).float()  # (B, k)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=torch.float))
    dcg = (hits * discount).sum(1)
    ideal_n = n_rel.clamp(max=k)
    idcg = torch.cumsum(discount, 0)[(ideal_n - 1).clamp(min=0)]
    counted = n_rel > 0
    ndcg = torch.where(counted, dcg / idcg, torch.zeros_like(dcg))
    recall = torch.where(counted, hits.sum(1) / ideal_n.clamp(min=1), torch.zeros_like(dcg))
    return float(ndcg.sum()), float(recall.sum()), float(counted.sum())


@torch.no_grad()
def validate(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    device: torch.device,
    config: TrainConfig,
    d: Dist = Dist(),
) -> dict[str, float]:
    """Validation metrics: each user's held-out ratings predicted from their training row.

    RMSE/MAE over the held-out ratings; NDCG@10 and recall@10 of the ranking scores with the
    training movies masked (of the served top 10 when the model re-ranks). Users are sharded
    across DDP ranks and the sums all-reduced.
    """
    was_training = model.training
    model.eval()
    users = np.flatnonzero(np.diff(val.indptr) > 0)[d.rank :: d.world]
    # Bounded dense blocks: at most EVAL_CELLS cells per (B, I) tensor on large catalogues.
    batch = max(1, min(config.eval_batch_size, EVAL_CELLS // train.shape[1]))
    sparse = model.sparse_training()  # then only the ranking scores are a (B, I) output
    sums = [0.0] * 6  # squared error, absolute error, n ratings, ndcg, recall, n ranked users
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        x, m = densify(train, rows, device)  # (B, I)
        y, ym = densify(val, rows, device)  # (B, I)
        with _autocast(device, config):
            if sparse:
                pred, scores = _sparse_outputs(model, train, val, rows, device)
            else:
                pred, scores = model(x, m)
        pred, scores = pred.float(), scores.float()
        if model.config.rerank_weight and model.ranking_head is not None:
            # The served ranking (re-ranking included), as scores of its top TOP_K positions.
            cols, vals = model.top_k_csr(train[rows], TOP_K)
            ranked_scores = ranks_as_scores(cols, vals, train.shape[1])
            scores = torch.from_numpy(ranked_scores).float().to(device)
        err = (pred - y) * ym
        ndcg, recall, ranked = _ndcg_recall_sums(scores.masked_fill(m, -math.inf), y, ym, TOP_K)
        batch_sums = [
            float((err**2).sum()),
            float(err.abs().sum()),
            float(ym.sum()),
            ndcg,
            recall,
            ranked,
        ]
        sums = [a + b for a, b in zip(sums, batch_sums, strict=True)]
    se, ae, n, ndcg_sum, recall_sum, ranked = _all_reduce(sums, device, d)
    model.train(was_training)
    return {
        "rmse": math.sqrt(se / n) if n else math.nan,
        "mae": ae / n if n else math.nan,
        "ndcg@10": ndcg_sum / ranked if ranked else math.nan,
        "recall@10": recall_sum / ranked if ranked else math.nan,
        "n_ratings": n,
    }


def _sparse_outputs(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    rows: np.ndarray,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(x, m)``'s outputs for ``validate`` from packed rows (``encode_sparse``): the
    ranking scores (B, I), and the clamped predicted ratings at the held-out cells only
    (``rate_columns``), zero elsewhere — the cells the validation reads."""
    users = model.encode_sparse(*pack_rows(train, rows, device))
    scores = model.rank_sparse(users)
    lens = np.diff(val.indptr)[rows]  # (B,)
    valid = np.arange(max(int(lens.max()), 1))[None, :] < lens[:, None]  # (B, k)
    cols = np.zeros(valid.shape, dtype=np.int64)
    cols[valid] = pack_rows(val, rows)[0].numpy()  # row-major order = packed order
    cols_t = torch.from_numpy(cols).to(device)
    valid_t = torch.from_numpy(valid).to(device)
    rated = model.rate_columns(users, cols_t).clamp(model.rating_min, model.rating_max)
    pred = torch.zeros(scores.shape, dtype=rated.dtype, device=device)
    pred[valid_t.nonzero(as_tuple=True)[0], cols_t[valid_t]] = rated[valid_t]
    return pred, scores


def _autocast(device: torch.device, config: TrainConfig) -> Any:
    """bf16 autocast on CUDA when ``config.amp``; a disabled context elsewhere."""
    enabled = config.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def monitor_key(model: Autoencoder, config: TrainConfig) -> tuple[str, bool]:
    """The validation metric early stopping watches, and whether higher is better."""
    key = config.monitor
    if key == "auto":
        key = "rmse" if model.config.ranking_loss == "none" else "ndcg@10"
    return key, key != "rmse"


# ---------------------------------------------------------------------------- fitting
def _log_epoch(record: dict[str, Any], config: TrainConfig) -> None:
    """One JSON line per epoch, to ``config.log_file`` or stdout."""
    line = json.dumps(record, sort_keys=True)
    if config.log_file:
        with open(config.log_file, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    else:
        print(line, flush=True)


def _epoch_batches(
    train: sp.csr_matrix, epoch: int, config: TrainConfig, d: Dist
) -> Iterator[np.ndarray]:
    """This rank's mini-batches of users for ``epoch`` (users with at least one rating)."""
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    order = np.random.default_rng([config.seed, epoch]).permutation(users)
    mine, per_rank = shard(order, config.batch_size, d)
    for start in range(0, len(mine), per_rank):
        yield mine[start : start + per_rank]


def _n_batches(train: sp.csr_matrix, config: TrainConfig, d: Dist) -> int:
    users = int((np.diff(train.indptr) > 0).sum())
    per_rank = max(1, config.batch_size // d.world) if d.active else config.batch_size
    return math.ceil(math.ceil(users / d.world) / per_rank)


def _train_epoch(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: sp.csr_matrix,
    epoch: int,
    step: int,
    total_steps: int,
    device: torch.device,
    config: TrainConfig,
    d: Dist,
    sparse: bool = False,
) -> tuple[dict[str, float], int]:
    """One pass over this rank's users; returns mean loss parts and the updated step count.
    ``sparse``: batches are packed rows for ``Autoencoder.loss_sparse`` (else dense blocks)."""
    n_batches = _n_batches(train, config, d)
    bar = tqdm(
        _epoch_batches(train, epoch, config, d),
        total=n_batches,
        desc=f"epoch {epoch}",
        leave=False,
        disable=not (config.progress and d.main),
        file=sys.stderr,
    )
    totals: dict[str, float] = {}
    for rows in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, total_steps, config)
        batch = pack_rows(train, rows, device) if sparse else densify(train, rows, device)
        with _autocast(device, config):
            loss, parts = objective(*batch)
        if config.zero_grad:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
    keys = sorted(totals)
    reduced = _all_reduce([totals[k] for k in keys] + [float(n_batches)], device, d)
    count = reduced[-1] or 1.0
    return {f"train_{k}": v / count for k, v in zip(keys, reduced, strict=False)}, step


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def fit(
    train: sp.csr_matrix,
    val: sp.csr_matrix | None,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
) -> tuple[Autoencoder, list[dict[str, Any]]]:
    """Train a model on ``train``; returns it (eval mode, on CPU) and the per-epoch history.

    With ``val``, each epoch is validated (:func:`validate`) and early stopping on the monitored
    metric restores the best epoch's weights. Inside an initialised process group the model is
    wrapped in DDP and the users sharded across ranks.
    """
    train = sp.csr_matrix(train, dtype=np.float32)
    if train.nnz == 0:
        raise DataError("cannot train on a matrix without ratings")
    d = current_dist()
    if d.active and not config.zero_grad:
        raise ValueError("zero_grad=False (accumulated gradients) is for one process, not DDP")
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        from ml import tutorial  # deferred: it imports this module

        if tutorial.supports(config, d, device, train):  # the seed preset: a hand-written loop
            return tutorial.fit(train, val, config, on_epoch=on_epoch)
        return _fit(train, val, config, d, device, on_epoch)
    finally:
        torch.set_num_threads(threads_before)


def _fit(
    train: sp.csr_matrix,
    val: sp.csr_matrix | None,
    config: TrainConfig,
    d: Dist,
    device: torch.device,
    on_epoch: EpochCallback | None,
) -> tuple[Autoencoder, list[dict[str, Any]]]:
    """The body of :func:`fit` once the device and threads are set."""
    _seed_everything(config.seed)
    model = Autoencoder.from_data(train, config.model).to(device)
    objective: nn.Module = _Objective(model)
    if d.active:
        objective = _wrap_ddp(objective, model, device)
    optimizer = make_optimizer(model, config)
    total_steps = config.epochs * _n_batches(train, config, d)
    sparse = model.sparse_training()

    def run_epoch(epoch: int, step: int) -> tuple[dict[str, float], int, float]:
        parts, step = _train_epoch(
            objective,
            optimizer,
            train,
            epoch,
            step,
            total_steps,
            device,
            config,
            d,
            sparse=sparse,
        )
        return parts, step, optimizer.param_groups[0]["lr"]

    history = run_epochs(model, train, val, config, d, device, run_epoch, on_epoch)
    return model.eval().to("cpu"), history


EpochRunner = Callable[[int, int], tuple[dict[str, float], int, float]]


def run_epochs(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix | None,
    config: TrainConfig,
    d: Dist,
    device: torch.device,
    run_epoch: EpochRunner,
    on_epoch: EpochCallback | None,
) -> list[dict[str, Any]]:
    """The epochs of a training loop around ``run_epoch(epoch, step) -> (loss parts, step, lr)``:
    one record per epoch (JSON line on the main rank, ``on_epoch``), validation, early stopping
    on the monitored metric, and the best epoch's weights restored at the end."""
    key, higher = monitor_key(model, config)
    users = int((np.diff(train.indptr) > 0).sum())
    best_value, best_epoch, best_state = -math.inf if higher else math.inf, 0, None
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        record: dict[str, Any] = {"epoch": epoch}
        parts, step, lr = run_epoch(epoch, step)
        record.update(parts)
        record["lr"] = lr
        record["seconds"] = time.perf_counter() - started
        record["users_per_s"] = users / record["seconds"]
        if val is not None and val.nnz:
            record.update(
                {f"val_{k}": v for k, v in validate(model, train, val, device, config, d).items()}
            )
            value = record[f"val_{key}"]
            better = value > best_value if higher else value < best_value
            if better or best_state is None:
                best_value, best_epoch = value, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            record["best_epoch"] = best_epoch
        history.append(record)
        if d.main:
            _log_epoch(record, config)
        if on_epoch is not None:
            on_epoch(record)
        if best_state is not None and config.patience and epoch - best_epoch >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


# ---------------------------------------------------------------------------- store → checkpoint
@dataclass
class TrainResult:
    """A written checkpoint: where, its weights' sha256, its manifest and metrics."""

    path: Path
    sha256: str
    manifest: dict[str, Any]
    metrics: dict[str, Any]


def choose_ranking_weights(
    model: Autoencoder, train: sp.csr_matrix, val: sp.csr_matrix
) -> dict[str, Any]:
    """On a held-out slice: the weight of the deep ranking correction beside EASE
    (``choose_wide_mix``), then that of the re-ranking by predicted ratings (``choose_rerank``).
    Returns the choices and the NDCG@10 of every candidate; {} for a model without EASE."""
    if model.wide is None:
        return {}
    tried = model.choose_wide_mix(train, val)
    reranks = model.choose_rerank(train, val)
    return {
        "wide_mix": model.config.wide_mix,
        "wide_mix_validation_ndcg@10": {str(k): v for k, v in tried.items()},
        "rerank_weight": model.config.rerank_weight,
        "rerank_validation_ndcg@10": {str(k): v for k, v in reranks.items()},
    }


def finish(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    full: sp.csr_matrix,
    config: TrainConfig,
) -> dict[str, Any]:
    """The finishing steps of a trained model, the same as the evaluation's (docs/evaluation.md).

    On the validation slice, which the weights never saw: refit the scales of the rating paths
    (``calibrate_rating_paths``) and choose the weight of the deep ranking correction beside EASE
    (``choose_wide_mix``) and the weight of the re-ranking by predicted ratings
    (``choose_rerank``); then validate the finished model (the metrics the registry compares).
    Last, tune and solve the closed-form EASE path again on every rating (``full``): it needs no
    early stopping, so the deployed model should not lose the slice. Returns the facts to record
    (with ``"validation"`` replaced by the finished model's figures); nothing without a slice.
    """
    if val.nnz == 0:
        return {}
    facts: dict[str, Any] = {"calibration": model.calibrate_rating_paths(train, val)}
    facts |= choose_ranking_weights(model, train, val)
    facts["validation"] = validate(model, train, val, torch.device("cpu"), config)
    if model.wide is not None:
        model.tune_closed_form_paths(full, seed=config.seed, rating_path=False)
        model.fit_closed_form_paths(full, rating_path=False)
        facts["wide_lambda"] = model.config.wide_lambda
    return facts


def gate_figures(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    movie_ids: np.ndarray,
    active: Path,
    config: TrainConfig,
) -> dict[str, Any]:
    """What the activation gate compares: the finished model and the active checkpoint at
    ``active``, each as it would be served, scored by :func:`validate` on the same held-out
    ratings — the new model's validation slice ``val``, less the ratings of movies the active
    model does not know (it could neither rank nor rate them) — from the same training rows.

    Both figures are optimistic alike: the active model saw most of this slice when it was
    trained, the new one's EASE path was solved on it at the end of :func:`finish`. They are
    meant for comparison, not as an estimate of quality. An active checkpoint that cannot be
    loaded is recorded with its error (the gate then says so).
    """
    try:
        old, manifest = checkpoint.load_model(active)
    except checkpoint.CheckpointError as exc:
        return {"active": {"path": str(active), "error": str(exc)}}
    old_ids = np.asarray(manifest["movie_ids"], dtype=np.int64)
    known = np.isin(movie_ids, old_ids).astype(np.float32)  # (I,)
    shared = sp.csr_matrix(val @ sp.diags(known), dtype=np.float32)
    shared.eliminate_zeros()
    cpu = torch.device("cpu")
    new_figures = validate(model, train, shared, cpu, config)
    old_figures = validate(
        old,
        remap_columns(train, movie_ids, old_ids),
        remap_columns(shared, movie_ids, old_ids),
        cpu,
        config,
    )
    return {
        "held_out_ratings": int(shared.nnz),
        "new": new_figures,
        "active": {"path": str(active), "sha256": manifest["weights_sha256"], **old_figures},
    }


def best_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"validation": {...}}`` of the restored (best) epoch, plus epoch counts."""
    validated = [h for h in history if "best_epoch" in h]
    if not validated:
        return {"validation": {}, "epochs_run": len(history)}
    best = validated[-1]["best_epoch"]
    record = next(h for h in history if h["epoch"] == best)
    val = {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}
    return {"validation": val, "best_epoch": best, "epochs_run": len(history)}


def learning_curve_png(history: list[dict[str, Any]]) -> bytes:
    """A PNG of the training loss and validation metrics per epoch (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].plot(epochs, [h.get("train_loss", math.nan) for h in history], label="train loss")
    axes[0].set_title("training objective")
    for ax, key in ((axes[1], "val_rmse"), (axes[2], "val_ndcg@10")):
        ax.plot(epochs, [h.get(key, math.nan) for h in history], marker=".")
        ax.set_title(key.replace("val_", "validation "))
    best = next((h.get("best_epoch") for h in reversed(history) if "best_epoch" in h), None)
    for ax in axes:
        ax.set_xlabel("epoch")
        if best:
            ax.axvline(best, color="grey", linestyle=":", label="restored epoch")
    axes[0].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def build_manifest(
    data: RatingsData, model: Autoencoder, config: TrainConfig, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Everything the checkpoint records besides the weights and architecture."""
    popularity = np.diff(data.matrix.tocsc().indptr)  # (I,) ratings per movie
    return {
        "movie_ids": [int(i) for i in data.movie_ids],
        "rating_scale": checkpoint.RATING_SCALE,
        "normalisation": {
            "kind": "model buffers (global mean, movie biases) computed from the training part",
            "global_mean": float(data.matrix.data.mean()),
        },
        "training": config.to_dict(),
        "data": data.snapshot(),
        "metrics": metrics,
        "popularity": [int(c) for c in popularity],
    }


def train_from_store(
    database_url: str,
    out_dir: Path,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    data: RatingsData | None = None,
    active: Path | None = None,
) -> TrainResult | None:
    """Load the store, hold out a validation slice, fit, write the checkpoint and its curve.

    Returns the written checkpoint; ``None`` on DDP ranks other than 0, which write nothing.
    ``data`` skips the load when the caller already has it. ``active``: the checkpoint now
    served, scored beside the new model on the same held-out slice for the activation gate
    (``metrics["gate"]``, see :func:`gate_figures`).
    """
    data = data if data is not None else load_ratings(database_url)
    if data.matrix.nnz == 0:
        raise DataError("the store has no ratings: import some before training")
    train, val = validation_split(data.matrix, config.val_frac, config.seed)
    model, history = fit(train, val if val.nnz else None, config, on_epoch=on_epoch)
    if not current_dist().main:
        return None
    metrics = best_metrics(history)
    metrics |= finish(model, train, val, data.matrix, config)
    if active is not None and val.nnz:
        metrics["gate"] = gate_figures(model, train, val, data.movie_ids, active, config)
    manifest = build_manifest(data, model, config, metrics)
    history_lines = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    path, sha = checkpoint.save(
        out_dir,
        model,
        manifest,
        extra_files={
            "learning_curve.png": learning_curve_png(history),
            "history.jsonl": history_lines.encode(),
        },
    )
    return TrainResult(path, sha, checkpoint.read_manifest(path), metrics)


# ---------------------------------------------------------------------------- entry point
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ml.train",
        description="Train on the store and write a checkpoint (DDP under torchrun).",
    )
    p.add_argument("--database-url", default=os.environ.get("MOVIEREC_DATABASE_URL"))
    p.add_argument(
        "--out", type=Path, default=Path(os.environ.get("MOVIEREC_MODEL_DIR", "var/models"))
    )
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--config", type=Path, help="JSON or TOML file of TrainConfig overrides")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset, then the config file, then explicit flags."""
    config = preset(args.preset)
    if args.config:
        config = with_overrides(config, read_config_file(args.config))
    flags = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
        "seed": args.seed,
    }
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if args.no_progress:
        overrides["progress"] = False
    return with_overrides(config, overrides)


def _init_distributed(config: TrainConfig) -> None:
    """Join the torchrun process group when RANK/WORLD_SIZE are set."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    device = resolve_device(config.device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        config.device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.database_url:
        print("error: give --database-url or set MOVIEREC_DATABASE_URL", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _init_distributed(config)
    try:
        result = train_from_store(args.database_url, args.out, config)
        if dist.is_initialized():
            # The other ranks wait for rank 0's finishing steps and checkpoint: a rank that
            # left the group while rank 0 was still working could abort ("terminate called").
            dist.barrier()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result is not None:
        print(json.dumps({"checkpoint": str(result.path), **result.metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
