"""Training benchmark: throughput against the matmul ceiling, and an epoch at MovieLens-32M scale.

``python bench/bench_train.py throughput [--database-url URL | --users U --movies M --ratings R]``
    Trains a fixed number of batches of the default model and reports users/s and the achieved
    GFLOP/s (matmul FLOPs of forward + backward, counted by ``torch.utils.flop_counter``), beside
    a plain ``torch.mm`` over the same matrix shapes timed in the same run as the attainable
    ceiling, and their ratio.

``python bench/bench_train.py scale --database-url URL [--batches N] [--compare] [--epoch]``
    Loads the store (e.g. 200,000 users x 87,000 movies x 32 million ratings made by
    ``movierec data synth``) with ``ml.data.load_ratings``, times the load, times ``N`` training
    batches the way the trainer feeds them (packed rows for ``Autoencoder.loss_sparse`` when the
    model allows it, else dense blocks) and extrapolates the time of one epoch, and reports the
    peak resident memory of the process. ``--compare`` also times ``N`` batches through the
    dense objective (``densify`` + ``Autoencoder.loss``) on the same model, interleaved with the
    packed ones. ``--epoch`` then runs the store trainer's own ``ml.fit.pipeline.fit`` for one whole
    epoch on the training part of ``ml.data.validation_split`` (as ``train_from_store``), with
    its validation pass over the held-out slice, timing each; the finishing steps and the
    checkpoint are left out. Without ``--database-url`` the CSR is generated directly with numpy
    (say so when reporting).

Both print one JSON object; nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.flop_counter import FlopCounterMode

import ml.fit.loop
import ml.fit.pipeline
from ml.data import densify, load_ratings, pack_rows, validation_split
from ml.fit.config import TrainConfig
from ml.fit.loop import make_optimizer
from ml.inference import resolve_device
from ml.model import Autoencoder, ModelConfig


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_csr(n_users: int, n_items: int, n_ratings: int, seed: int = 0) -> sp.csr_matrix:
    """A popularity-skewed random ratings CSR built with numpy alone (no store)."""
    rng = np.random.default_rng(seed)
    per_user = rng.multinomial(n_ratings, np.full(n_users, 1.0 / n_users))
    per_user = np.minimum(per_user, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity /= popularity.sum()
    indptr = np.concatenate(([0], np.cumsum(per_user))).astype(np.int64)
    cols = np.empty(indptr[-1], dtype=np.int32)
    for u in range(n_users):  # one row at a time: distinct movies per user
        a, b = indptr[u], indptr[u + 1]
        if b > a:
            cols[a:b] = np.sort(
                rng.choice(n_items, size=b - a, replace=False, p=popularity)
                if b - a < n_items // 4
                else rng.permutation(n_items)[: b - a]
            )
    data = (rng.integers(1, 11, size=len(cols)) / 2).astype(np.float32)
    return sp.csr_matrix((data, cols, indptr), shape=(n_users, n_items))


def matmul_shapes(model: Autoencoder, batch: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every matmul a training step does on the 2-D weights of ``model``:
    forward (B x a)(a x b); for trainable weights also the weight and input gradients."""
    shapes: list[tuple[int, int, int]] = []
    for p in model.parameters():
        if p.dim() != 2:
            continue
        a, b = p.shape
        shapes.append((batch, a, b))
        if p.requires_grad:
            shapes.append((a, batch, b))
            shapes.append((batch, b, a))
    return shapes


def matmul_ceiling(shapes: list[tuple[int, int, int]], device: torch.device, repeat: int) -> float:
    """GFLOP/s of plain ``torch.mm`` over ``shapes``, operands allocated once."""
    operands = [
        (torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for m, k, n in shapes
    ]
    flops = sum(2.0 * m * k * n for m, k, n in shapes) * repeat
    for a, b in operands:  # warm-up
        torch.mm(a, b)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        for a, b in operands:
            torch.mm(a, b)
    _sync(device)
    return flops / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model: Autoencoder, x: torch.Tensor, m: torch.Tensor) -> int:
    """Matmul FLOPs of one forward + backward of the training objective."""
    with FlopCounterMode(display=False) as counter:
        loss, _ = model.loss(x, m)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _step(
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    train: sp.csr_matrix,
    rows: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    sparse: bool,
) -> None:
    """One training step as ``ml.fit.loop._train_epoch`` takes it: batch, objective, backward,
    gradient clipping, AdamW."""
    batch = pack_rows(train, rows, device) if sparse else densify(train, rows, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss, _ = model.loss_sparse(*batch) if sparse else model.loss(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()


def time_batches(
    model: Autoencoder,
    train: sp.csr_matrix,
    config: TrainConfig,
    n_batches: int,
    device: torch.device,
    modes: tuple[bool, ...] | None = None,
) -> dict[bool, float]:
    """Seconds for ``n_batches`` full training steps per mode (True: packed rows and
    ``loss_sparse``; False: dense blocks and ``loss``; default: the trainer's choice), the modes
    interleaved batch by batch on the same random batches, after one untimed warm-up step each.
    """
    modes = modes if modes is not None else (model.sparse_training(),)
    optimizer = make_optimizer(model, config)
    rng = np.random.default_rng(0)
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    model.train()
    for sparse in modes:  # warm-up, not timed
        rows = rng.choice(users, config.batch_size, replace=False)
        _step(model, optimizer, train, rows, config, device, sparse)
    seconds = dict.fromkeys(modes, 0.0)
    for _ in range(n_batches):
        rows = rng.choice(users, config.batch_size, replace=False)
        for sparse in modes:
            _sync(device)
            start = time.perf_counter()
            _step(model, optimizer, train, rows, config, device, sparse)
            _sync(device)
            seconds[sparse] += time.perf_counter() - start
    return seconds


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.database_url:
        train = load_ratings(args.database_url).matrix
        source = "store"
    else:
        train = synthetic_csr(args.users, args.movies, args.ratings)
        source = "numpy synthetic"
    config = TrainConfig(batch_size=args.batch_size, device=str(device))
    torch.manual_seed(0)
    model = Autoencoder.from_data(train, ModelConfig()).to(device)
    x, m = densify(train, np.arange(min(config.batch_size, train.shape[0])), device)
    flops = step_flops(model, x, m)
    (seconds,) = time_batches(model, train, config, args.batches, device).values()
    users = args.batches * config.batch_size
    achieved = flops * args.batches / seconds / 1e9
    ceiling = matmul_ceiling(matmul_shapes(model, config.batch_size), device, repeat=3)
    return {
        "mode": "throughput",
        "data": source,
        "shape": list(train.shape),
        "ratings": int(train.nnz),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": config.batch_size,
        "batches": args.batches,
        "users_per_s": users / seconds,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_ceiling_gflops": ceiling,
        "ratio": achieved / ceiling,
    }


def scale(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    start = time.perf_counter()
    if args.database_url:
        train = load_ratings(args.database_url).matrix
        source = "store (load_ratings)"
    else:
        train = synthetic_csr(args.users, args.movies, args.ratings)
        source = "numpy synthetic (no store)"
    load_s = time.perf_counter() - start
    rss_after_load = peak_rss_gib()
    config = TrainConfig(batch_size=args.batch_size, device=str(device))
    torch.manual_seed(0)
    build_start = time.perf_counter()
    model = Autoencoder.from_data(train, ModelConfig()).to(device)
    build_s = time.perf_counter() - build_start
    sparse = model.sparse_training()
    modes = (True, False) if args.compare and sparse else (sparse,)
    timed = time_batches(model, train, config, args.batches, device, modes)
    seconds = timed[sparse]
    users = args.batches * config.batch_size
    n_users = int((np.diff(train.indptr) > 0).sum())
    batches_per_epoch = int(np.ceil(n_users / config.batch_size))
    result: dict[str, Any] = {
        "mode": "scale",
        "data": source,
        "shape": list(train.shape),
        "ratings": int(train.nnz),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "peak_rss_after_load_gib": rss_after_load,
        "model_build_s": build_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": config.batch_size,
        "batches_per_epoch": batches_per_epoch,
        "timed_batches": args.batches,
        "objective": "loss_sparse (packed rows)" if sparse else "loss (dense blocks)",
        "seconds_per_batch": seconds / args.batches,
        "users_per_s": users / seconds,
        "extrapolated_epoch_s": seconds / args.batches * batches_per_epoch,
    }
    if len(modes) == 2:
        result["dense_objective_seconds_per_batch"] = timed[not sparse] / args.batches
        result["speedup"] = timed[not sparse] / seconds
    result["peak_rss_before_epoch_gib"] = peak_rss_gib()
    if args.epoch:
        del model  # fit builds its own
        result |= one_epoch(train, device, args.batch_size)
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def one_epoch(train: sp.csr_matrix, device: torch.device, batch_size: int) -> dict[str, Any]:
    """One epoch of the store trainer (``ml.fit.pipeline.fit``, its default config, ``epochs=1``) on
    the training part of the validation split ``train_from_store`` makes, with its validation
    pass; the finishing steps and the checkpoint are not run."""
    config = TrainConfig(epochs=1, batch_size=batch_size, device=str(device), progress=True)
    start = time.perf_counter()
    fit_part, val_part = validation_split(train, config.val_frac, config.seed)
    split_s = time.perf_counter() - start
    validate = ml.fit.loop.validate
    validation_s = 0.0

    def timed_validate(*args: Any, **kwargs: Any) -> dict[str, float]:
        nonlocal validation_s
        started = time.perf_counter()
        try:
            return validate(*args, **kwargs)
        finally:
            validation_s += time.perf_counter() - started

    ml.fit.loop.validate = timed_validate  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        model, history = ml.fit.pipeline.fit(fit_part, val_part, config)
        fit_s = time.perf_counter() - start
    finally:
        ml.fit.loop.validate = validate  # type: ignore[assignment]
    record = history[0]
    return {
        "epoch_split_s": split_s,
        "epoch_train_users": int((np.diff(fit_part.indptr) > 0).sum()),
        "epoch_heldout_ratings": int(val_part.nnz),
        "epoch_fit_s": fit_s,
        "epoch_s": record["seconds"],
        "epoch_users_per_s": record["users_per_s"],
        "epoch_validation_s": validation_s,
        "epoch_record": record,
        "epoch_objective": "loss_sparse" if model.sparse_training() else "loss",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["throughput", "scale"])
    p.add_argument("--database-url")
    p.add_argument("--users", type=int, default=943)
    p.add_argument("--movies", type=int, default=1682)
    p.add_argument("--ratings", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument(
        "--compare", action="store_true", help="scale: also time the dense objective, interleaved"
    )
    p.add_argument("--epoch", action="store_true", help="scale: then run one whole epoch of fit")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = throughput(args) if args.mode == "throughput" else scale(args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
