"""GPU check: training on CUDA with bf16 against CPU, and serving latency on CUDA.

``python bench/gpu_check.py [--database-url URL] [--epochs 3]``

1. Trains the default model for ``--epochs`` epochs on CUDA (bf16 autocast) and for one epoch on
   CPU, on the same data and split, and reports the seconds per epoch of each and the CUDA
   run's validation metrics.
2. Loads the CUDA model as a ``Recommender`` on CUDA (and on CPU for comparison) and reports the
   latency per request of recommendations for batches of 1, 8 and 64 users.

Without a store (``--database-url``) the ratings are a MovieLens-1M-sized synthetic CSR made
with numpy. Exits with status 2 and a clear message when no CUDA device is present. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from bench_train import synthetic_csr  # run as a script: bench/ is on sys.path

from ml.checkpoint import save
from ml.data import load_ratings, validation_split
from ml.fit.config import TrainConfig
from ml.fit.pipeline import fit
from ml.inference import Recommender


def epoch_seconds(history: list[dict[str, Any]]) -> list[float]:
    return [round(h["seconds"], 3) for h in history]


def train_both(train: sp.csr_matrix, val: sp.csr_matrix, epochs: int, accel: str) -> dict[str, Any]:
    """CUDA (bf16) for ``epochs`` epochs and CPU for one, same data and seed."""
    quiet = TrainConfig(progress=False, patience=0, log_file=os.devnull)
    cuda_config = dataclasses.replace(quiet, epochs=epochs, device=accel, amp=True)
    model, cuda_hist = fit(train, val, cuda_config)
    cpu_config = dataclasses.replace(quiet, epochs=1, device="cpu")
    _, cpu_hist = fit(train, val, cpu_config)
    return {
        "model": model,
        "cuda_epoch_s": epoch_seconds(cuda_hist),
        "cpu_epoch_s": epoch_seconds(cpu_hist),
        "speedup": cpu_hist[0]["seconds"] / min(h["seconds"] for h in cuda_hist),
        "cuda_validation": {k: v for k, v in cuda_hist[-1].items() if k.startswith("val_")},
    }


def serving_latency(
    rec: Recommender, matrix: sp.csr_matrix, batch: int, repeat: int
) -> dict[str, float]:
    """Milliseconds per request of ``recommend_many`` over batches of ``batch`` users."""
    rng = np.random.default_rng(0)
    users = []
    for row in rng.choice(matrix.shape[0], size=batch, replace=False):
        a, b = matrix.indptr[row], matrix.indptr[row + 1]
        ids = rec.movie_ids[matrix.indices[a:b]]
        users.append(dict(zip(ids.tolist(), matrix.data[a:b].tolist(), strict=True)))
    rec.recommend_many(users, n=10)  # warm-up
    if rec.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        rec.recommend_many(users, n=10)
    if rec.device.type == "cuda":
        torch.cuda.synchronize()
    per_call = (time.perf_counter() - start) / repeat
    return {
        "batch": batch,
        "ms_per_request": 1000 * per_call / batch,
        "ms_per_batch": 1000 * per_call,
    }


def add_smoke_flag(p: argparse.ArgumentParser) -> None:
    """``--smoke-on-cpu``: every step on CPU, to check a GPU script itself without a GPU."""
    p.add_argument(
        "--smoke-on-cpu",
        action="store_true",
        help="Run every step on CPU (checks the script itself, not the GPU).",
    )


def accelerator(smoke_on_cpu: bool, script: str) -> str | None:
    """``"cpu"`` for a smoke run, ``"cuda"`` when a CUDA device is present, else None after
    saying so."""
    if smoke_on_cpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    print(f"{script}: no CUDA device is available; run this on a machine with a GPU.")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=50)
    add_smoke_flag(p)
    args = p.parse_args(argv)
    accel = accelerator(args.smoke_on_cpu, "gpu_check")
    if accel is None:
        return 2
    if args.smoke_on_cpu:
        matrix = synthetic_csr(300, 200, 6000)
        movie_ids = np.arange(1, matrix.shape[1] + 1)
    elif args.database_url:
        data = load_ratings(args.database_url)
        matrix, movie_ids = data.matrix, data.movie_ids
    else:
        matrix = synthetic_csr(6040, 3706, 1_000_209)
        movie_ids = np.arange(1, matrix.shape[1] + 1)
    train, val = validation_split(matrix, 0.05, seed=0)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if accel == "cuda" else "cpu (smoke run)",
        "shape": list(matrix.shape),
        "ratings": int(matrix.nnz),
    }
    trained = train_both(train, val, args.epochs, accel)
    model = trained.pop("model")
    report["training"] = trained
    with tempfile.TemporaryDirectory() as tmp:
        manifest = {
            "movie_ids": movie_ids.tolist(),
            "popularity": np.diff(matrix.tocsc().indptr).tolist(),
        }
        path, _ = save(Path(tmp), model, manifest)
        for device in (accel, "cpu"):
            rec = Recommender.from_checkpoint(path, device=device)
            report[f"serving_{device}" if device == "cpu" or accel == "cuda" else "serving"] = [
                serving_latency(rec, train, b, args.repeat) for b in (1, 8, 64)
            ]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
