"""The training loop: mini-batches of users, the learning-rate schedule, validation, early
stopping, and DistributedDataParallel.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process takes an interleaved shard of the
shuffled users (same number of batches per process), validation sums are all-reduced, and only
rank 0 logs. Batches are taken on the fly from the CSR matrix: packed sparse rows
(:func:`ml.data.pack_rows`, ``Autoencoder.loss_sparse``) when the model's objective allows it
(no wide or item-code path: large catalogues), else dense (B x movies) blocks
(:func:`ml.data.densify`); no dense users x movies matrix is ever built.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ml import metrics
from ml.data import densify, pack_rows
from ml.fit.config import TrainConfig
from ml.model import Autoencoder, ranks_as_scores
from ml.progress import phase

EpochCallback = Callable[[dict[str, Any]], None]
# Called before every mini-batch of either training loop; it raises to stop training there
# (the worker's cancellation and shutdown). Unset: nothing is called.
before_batch: ContextVar[Callable[[], None] | None] = ContextVar("before_batch", default=None)
TOP_K = 10
EVAL_CELLS = 1 << 24  # largest (users x movies) block densified at once during validation


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
    """Sums over users of NDCG@k and recall@k (``ml.metrics.ndcg_of_hits``, ``recall_of_hits``:
    relevance = held-out rating >= 4), and the number of users counted (those with a relevant
    held-out movie). ``scores`` already has the training movies at -inf; the top k is taken
    on the scores' device, only the (B, k) hits come to the CPU."""
    relevant = truth_mask & (truth >= metrics.RELEVANCE_THRESHOLD)  # (B, I)
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices  # (B, k)
    hits = relevant.gather(1, top).cpu().numpy()  # (B, k)
    n_rel = relevant.sum(1).cpu().numpy()  # (B,)
    ndcg = metrics.ndcg_of_hits(hits, n_rel)
    recall = metrics.recall_of_hits(hits, n_rel)
    return float(np.nansum(ndcg)), float(np.nansum(recall)), float((n_rel > 0).sum())


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
    check = before_batch.get()
    for start in range(0, len(mine), per_rank):
        if check is not None:
            check()
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
    best_value, best_epoch, best_state = -math.inf if higher else math.inf, 0, None
    history: list[dict[str, Any]] = []
    step = 0
    with phase("epochs", total=config.epochs) as epochs:
        for epoch in range(1, config.epochs + 1):
            record, step = _one_epoch(model, train, val, config, d, device, run_epoch, epoch, step)
            if val is not None and val.nnz:
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
            epochs.step(epoch, loss=record.get("train_loss"), best_epoch=record.get("best_epoch"))
            if best_state is not None and config.patience and epoch - best_epoch >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def _one_epoch(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix | None,
    config: TrainConfig,
    d: Dist,
    device: torch.device,
    run_epoch: EpochRunner,
    epoch: int,
    step: int,
) -> tuple[dict[str, Any], int]:
    """One epoch's record (loss parts, learning rate, time, validation figures) and the step
    count after it."""
    users = int((np.diff(train.indptr) > 0).sum())
    started = time.perf_counter()
    model.train()
    record: dict[str, Any] = {"epoch": epoch}
    parts, step, lr = run_epoch(epoch, step)
    record.update(parts)
    record["lr"] = lr
    record["seconds"] = time.perf_counter() - started
    record["users_per_s"] = users / record["seconds"]
    if val is not None and val.nnz:
        figures = validate(model, train, val, device, config, d)
        record.update({f"val_{k}": v for k, v in figures.items()})
    return record, step
