"""Re-ranking EASE's candidates with the predicted ratings, measured on validation slices.

The validation slices are those of docs/model.md, protocol (b): ``split_per_user(all, 0.2,
seed)`` → training part → ``split_per_user(train, 0.2, 100 + seed)`` → the remaining part and
the validation slice; the test part is never read. One torch thread.

``python bench/rerank.py validate --ratings-csv R.csv [--seed S]``
    Trains the default preset with ``ml.fit.pipeline.fit`` on the remaining part (early stopping on
    its 5 % slice), finishes it as ``ml.fit.finish.finish`` does (rating paths calibrated on that
    slice, EASE path tuned and solved on the whole remaining part), then prints the validation
    NDCG@10 of EASE's ranking and of each re-ranking variant: EASE's top K' candidates
    ordered by ``ease + γ · f(predicted rating)``, ``f`` either the rating itself or
    log P(rating ≥ 4) under a normal spread (σ = the slice's RMSE); also the per-user
    difference to EASE with its standard error, on the validation slice and on the 5 % slice.

Each prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import log_ndtr

from ml import metrics
from ml.data import split_per_user, validation_split
from ml.evaluate import EASE_LAMBDAS, ratings_from_csv, refit_wide_path
from ml.fit.config import preset, with_overrides
from ml.fit.pipeline import fit
from ml.model import _dense_rows


def scores_of(model, train: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(EASE scores, predicted ratings) (B, I) of the given rows of ``train``."""
    x, m = (torch.from_numpy(a) for a in _dense_rows(train, rows))
    with torch.no_grad():
        pred, _ = model.eval()(x, m)
        b = m.float()
        wide = b @ model.wide - b * torch.diagonal(model.wide)
    return wide.numpy().astype(np.float64), pred.numpy().astype(np.float64)


def rerank(ease: np.ndarray, feat: np.ndarray, gamma: float, k: int) -> np.ndarray:
    """Scores whose order is: EASE's top k (already masked) by ease + γ·feat, then the rest by
    EASE (an offset keeps the candidates first)."""
    out = ease.copy()
    if gamma == 0.0:
        return out
    k = min(k, ease.shape[1])
    top = np.argpartition(-ease, k - 1, axis=1)[:, :k]
    r = np.arange(ease.shape[0])[:, None]
    cand = ease[r, top] + gamma * feat[r, top]
    finite = np.isfinite(ease[r, top])
    big = 1e6
    out[r, top] = np.where(finite, cand + big, -np.inf)
    return out


def variants(ease, pred, sigma):
    feats = {"rating": pred, "logp4": log_ndtr((pred - 3.5) / sigma)}
    out = {("ease", 0, 0.0): (ease, None)}
    for name, feat in feats.items():
        for k in (20, 50, 100, 200):
            for g in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
                out[(name, k, g)] = (feat, (g, k))
    return out


def evaluate_slice(model, train, held, sigma) -> dict:
    relevant = metrics.relevance(sp.csr_matrix(held))
    users = np.flatnonzero(relevant.any(axis=1))
    per: dict = {}
    for start in range(0, users.size, 256):
        rows = users[start : start + 256]
        ease, pred = scores_of(model, train, rows)
        ease = metrics.mask_seen(ease, train[rows])
        rel = relevant[rows]
        for key, (feat, gk) in variants(ease, pred, sigma).items():
            s = ease if gk is None else rerank(ease, feat, *gk)
            per.setdefault(key, []).append(metrics.ndcg_at_k(s, rel, 10))
    per = {k: np.concatenate(v) for k, v in per.items()}
    base = per[("ease", 0, 0.0)]
    out = {}
    for key, v in per.items():
        d = v - base
        ok = np.isfinite(d)
        se = float(d[ok].std(ddof=1) / np.sqrt(ok.sum()))
        out["/".join(map(str, key))] = (float(np.nanmean(v)), float(np.nanmean(d)), se)
    return out


def validate(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    data = ratings_from_csv(args.ratings_csv)
    m = sp.csr_matrix(data.matrix, dtype=np.float32)
    train, _ = split_per_user(m, 0.2, args.seed)
    rest, val = split_per_user(train, 0.2, 100 + args.seed)
    cfg = with_overrides(
        preset("default"),
        {"seed": args.seed, "threads": 1, "progress": False, "log_file": os.devnull},
    )
    fit_part, stop = validation_split(rest, cfg.val_frac, args.seed)
    cache = Path(args.cache) / f"model_{args.seed}.pt" if args.cache else None
    if cache is not None and cache.exists():
        model = torch.load(cache, weights_only=False)
    else:
        model, _ = fit(fit_part, stop, cfg)
        cal = model.calibrate_rating_paths(fit_part, stop)
        print(json.dumps({"seed": args.seed, "calibration": cal}), flush=True)
        if cache is not None:
            torch.save(model, cache)
    sigma = args.sigma
    # The 5 % slice, ranked from the fit part (as finish sees it), before the EASE refit.
    on_stop = evaluate_slice(model, fit_part, stop, sigma)
    refit_wide_path(model, rest, args.seed, EASE_LAMBDAS)
    on_val = evaluate_slice(model, rest, val, sigma)
    for key in on_val:
        print(
            json.dumps(
                {"seed": args.seed, "variant": key, "val": on_val[key], "stop": on_stop[key]}
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--ratings-csv", type=Path, required=True)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--sigma", type=float, default=0.9)
    v.add_argument("--cache", default="")
    args = parser.parse_args()
    validate(args)


if __name__ == "__main__":
    main()
