"""The one training pipeline: load the store → fit → finish → write the checkpoint; the caller
registers it (``movierec train``, the worker). Also the ``python -m ml.train`` entry point,
which runs under ``torchrun --nproc-per-node K -m ml.train ...`` too (only rank 0 finishes and
writes)."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from ml import checkpoint, tutorial
from ml.data import DataError, RatingsData, load_ratings, validation_split
from ml.fit.config import PRESETS, TrainConfig, preset, read_config_file, with_overrides
from ml.fit.finish import finish, gate_figures
from ml.fit.loop import EpochCallback, _fit, current_dist
from ml.inference import resolve_device
from ml.model import Autoencoder
from ml.progress import ProgressCallback, phase, printer, reporting


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
        if tutorial.supports(config, d, device, train):  # the seed preset: a hand-written loop
            return tutorial.fit(train, val, config, on_epoch=on_epoch)
        return _fit(train, val, config, d, device, on_epoch)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class TrainResult:
    """A written checkpoint: where, its weights' sha256, its manifest and metrics."""

    path: Path
    sha256: str
    manifest: dict[str, Any]
    metrics: dict[str, Any]


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
    on_progress: ProgressCallback | None = None,
    data: RatingsData | None = None,
    active: Path | None = None,
) -> TrainResult | None:
    """Load the store, hold out a validation slice, fit, finish, write the checkpoint and its
    curve.

    Returns the written checkpoint; ``None`` on DDP ranks other than 0, which write nothing.
    ``data`` skips the load when the caller already has it. ``active``: the checkpoint now
    served, scored beside the new model on the same held-out slice for the activation gate
    (``metrics["gate"]``, see :func:`gate_figures`). ``on_progress`` receives the reports of
    every phase (``ml.progress``; on the main rank only).
    """
    with reporting(on_progress if current_dist().main else None):
        return _train_from_store(database_url, out_dir, config, on_epoch, data, active)


def _train_from_store(
    database_url: str,
    out_dir: Path,
    config: TrainConfig,
    on_epoch: EpochCallback | None,
    data: RatingsData | None,
    active: Path | None,
) -> TrainResult | None:
    if data is None:
        with phase("loading"):
            data = load_ratings(database_url)
    if data.matrix.nnz == 0:
        raise DataError("the store has no ratings: import some before training")
    train, val = validation_split(data.matrix, config.val_frac, config.seed)
    model, history = fit(train, val if val.nnz else None, config, on_epoch=on_epoch)
    if not current_dist().main:
        return None
    metrics = best_metrics(history)
    with phase("finishing"):
        metrics |= finish(model, train, val, data.matrix, config)
        if active is not None and val.nnz:
            metrics["gate"] = gate_figures(model, train, val, data.movie_ids, active, config)
    with phase("writing"):
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
        report = printer() if config.progress else None
        result = train_from_store(args.database_url, args.out, config, on_progress=report)
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
