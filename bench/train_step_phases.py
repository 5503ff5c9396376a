"""Per-phase times of one training step, the dense objective against packed rows.

``python bench/train_step_phases.py [--users U --movies M --ratings R --steps N --threads T]``

Both objectives are written out phase by phase as ``Autoencoder.loss`` (dense blocks from
``ml.data.densify``) and ``Autoencoder.loss_sparse`` (packed rows from ``ml.data.pack_rows``)
compute them for the default model without wide paths (catalogues above 8,000 movies), and run
on the same random batches of 64 users, one after the other, after one untimed warm-up step
each. Prints a Markdown table of milliseconds per step. Memory is paid for where it is first
written, so the split between neighbouring phases is approximate.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from bench_train import synthetic_csr  # run as a script: bench/ is on sys.path

from ml.data import densify, pack_rows
from ml.fit.config import TrainConfig
from ml.fit.loop import make_optimizer
from ml.model import Autoencoder, ModelConfig

Tick = Callable[[str], None]


def _finish(model: Autoencoder, opt: torch.optim.Optimizer, loss: torch.Tensor, tick: Tick) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    tick("backward")
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    tick("gradient clipping")
    opt.step()
    tick("AdamW (fused)")


def dense_step(
    model: Autoencoder, opt: torch.optim.Optimizer, train: sp.csr_matrix, rows, tick: Tick
) -> None:
    cfg = model.config
    x, m = densify(train, rows)
    tick("batch (densify / pack_rows)")
    mf = m.float()
    keep = m & (torch.rand_like(mf) >= cfg.input_dropout)
    kf = keep.float()
    n = kf.sum(1, keepdim=True)
    dev = (x * keep - model.global_mean - model.item_bias) * kf
    ub = dev.sum(1, keepdim=True) / (n + cfg.user_bias_reg)
    resid = (dev - ub) * kf
    base = model.global_mean + model.item_bias + ub
    sc = n.clamp_min(1).rsqrt()
    tick("input dropout, residuals")
    assert model.w_rating is not None and model.w_binary is not None
    h = model.input_bias + (resid * sc) @ model.w_rating + (kf * sc) @ model.w_binary
    tick("first layer")
    assert model.ranking_head is not None
    hidden = model._hidden(h)
    pred = model.rating_head(hidden) + base
    scores = model.ranking_head(hidden)
    tick("hidden + heads")
    rating = ((pred - x) ** 2 * mf).sum() / mf.sum().clamp_min(1)
    ranking = -((F.log_softmax(scores, 1) * mf).sum(1) / mf.sum(1).clamp_min(1)).mean()
    loss = cfg.rating_weight * rating + cfg.ranking_weight * ranking
    tick("losses")
    _finish(model, opt, loss, tick)


def packed_step(
    model: Autoencoder, opt: torch.optim.Optimizer, train: sp.csr_matrix, rows, tick: Tick
) -> None:
    cfg = model.config
    idx, val, off = pack_rows(train, rows)
    tick("batch (densify / pack_rows)")
    n_b = off.numel()
    lengths = torch.diff(off, append=off.new_tensor([idx.numel()]))
    seg = torch.repeat_interleave(torch.arange(n_b), lengths)
    keep = (torch.rand(n_b, model.n_items)[seg, idx] >= cfg.input_dropout).float()
    nk = torch.zeros(n_b).index_add_(0, seg, keep).unsqueeze(1)
    dev = (val * keep - model.global_mean - model.item_bias[idx]) * keep
    ub = torch.zeros(n_b).index_add_(0, seg, dev).unsqueeze(1) / (nk + cfg.user_bias_reg)
    resid = (dev - ub[seg, 0]) * keep
    base = model.global_mean + model.item_bias[idx] + ub[seg, 0]
    sc = nk.clamp_min(1).rsqrt()
    tick("input dropout, residuals")
    assert model.w_rating is not None and model.w_binary is not None
    h = (
        model.input_bias
        + F.embedding_bag(
            idx, model.w_rating, off, mode="sum", per_sample_weights=resid * sc[seg, 0]
        )
        + F.embedding_bag(
            idx, model.w_binary, off, mode="sum", per_sample_weights=keep * sc[seg, 0]
        )
    )
    tick("first layer")
    assert model.ranking_head is not None
    hidden = model._hidden(h)
    rows_w = F.embedding(idx, model.rating_head.weight)
    pred = (hidden[seg] * rows_w).sum(1) + model.rating_head.bias[idx] + base
    scores = model.ranking_head(hidden)
    tick("hidden + heads")
    rating = (pred - val).square().sum() / idx.numel()
    picked = F.log_softmax(scores, 1)[seg, idx]
    per_user = torch.zeros(n_b).index_add_(0, seg, picked)
    ranking = -(per_user / lengths.float().clamp_min(1)).mean()
    loss = cfg.rating_weight * rating + cfg.ranking_weight * ranking
    tick("losses")
    _finish(model, opt, loss, tick)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--movies", type=int, default=87_000)
    p.add_argument("--ratings", type=int, default=3_200_000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = synthetic_csr(args.users, args.movies, args.ratings)
    torch.manual_seed(0)
    model = Autoencoder.from_data(train, ModelConfig(wide=False, wide_rating=False, item_codes=0))
    model.train()
    opt = make_optimizer(model, TrainConfig())
    rng = np.random.default_rng(0)
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    times: dict[str, dict[str, float]] = {"dense": {}, "packed": {}}
    for it in range(args.steps + 1):
        rows = rng.choice(users, 64, replace=False)
        for name, step in (("dense", dense_step), ("packed", packed_step)):
            acc = times[name] if it else {}
            last = time.perf_counter()

            def tick(phase: str, acc: dict[str, float] = acc) -> None:
                nonlocal last
                now = time.perf_counter()
                acc[phase] = acc.get(phase, 0.0) + now - last
                last = now

            step(model, opt, train, rows, tick)
    print("| phase | dense ms | packed ms |\n|---|---|---|")
    for phase in times["dense"]:
        dense, packed = (times[k][phase] / args.steps * 1000 for k in ("dense", "packed"))
        print(f"| {phase} | {dense:.0f} | {packed:.0f} |")
    totals = (sum(times[k].values()) / args.steps * 1000 for k in ("dense", "packed"))
    print("| total | {:.0f} | {:.0f} |".format(*totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
