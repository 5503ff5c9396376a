"""The item-code rating path measured on validation slices, and its serving cost.

The validation slices are those of docs/model.md, protocol (a): ``split_ratings(all, 0.2,
seed)`` → training part → ``split_ratings(train, 0.2, 100 + seed)`` → the remaining part and the
validation slice; the test part is never read. One torch thread.

``python bench/item_codes.py rows --ratings-csv R.csv [--seed S] [--model JSON]
[--lambdas 30,100]``
    Trains the item autoencoder of ``ModelConfig`` (fields overridden by ``--model``) on the
    remaining part (minus the
    5 % early-stopping slice, as ``fit`` sees it), keeping its decoder, and prints the
    validation RMSE of the trained decoder rows beside that of the fold-in (each user's vector
    solved from their ratings on the frozen codes) for each fold-in λ.

``python bench/item_codes.py validate --ratings-csv R.csv [--seed S] [--model JSON]
[--lambdas 50,100]``
    Trains the default preset (``ModelConfig`` fields overridden by ``--model``) with
    ``ml.fit.pipeline.fit`` and early stopping on its 5 % slice, calibrates the rating paths on that
    slice (``calibrate_rating_paths``) for each fold-in λ, and prints the validation RMSE.

``python bench/item_codes.py serve CHECKPOINT --ratings-csv R.csv``
    Milliseconds per user of ``Recommender.top_k_rows`` (k = 10) for 64 users of the file at
    batch 1 and 8, with the item-code path on and off (and the checkpoint's re-ranking, when
    it has one, on and off), beside the previous serving path (every rating of the catalogue
    computed, then gathered; never re-ranked).

``python bench/item_codes.py synthetic [--movies 87000]``
    The same comparison of serving paths on a random catalogue of that many movies (2,000
    users, 200,000 Zipf-skewed ratings, default ``ModelConfig``: no wide or item-code paths
    there), batch 1 and 8, 64 users; checks that both give the same predicted ratings.

Each prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ml.baselines import BiasBaseline
from ml.checkpoint import save
from ml.data import densify, split_ratings, validation_split
from ml.evaluate import autoencoder_scorer, rating_errors, ratings_from_csv
from ml.fit.config import preset, with_overrides
from ml.fit.pipeline import fit
from ml.inference import Recommender
from ml.model import Autoencoder, ModelConfig, bias_statistics, fold_in_codes, user_offsets


def slices(ratings_csv: Path, seed: int) -> tuple[sp.csr_matrix, ...]:
    """(remaining part, validation slice, fit part, early-stopping slice) of one seed."""
    data = ratings_from_csv(ratings_csv)
    m = sp.csr_matrix(data.matrix, dtype=np.float32)
    train, _ = split_ratings(m, 0.2, seed)
    rest, val = split_ratings(train, 0.2, 100 + seed)
    fit_part, stop = validation_split(rest, preset("default").val_frac, seed)
    return rest, val, fit_part, stop


def rmse_at(pred: np.ndarray, m: sp.csr_matrix) -> float:
    coo = m.tocoo()
    return float(np.sqrt(np.mean((np.clip(pred, 1, 5) - coo.data) ** 2)))


def rows(args: argparse.Namespace) -> None:
    _, val, fit_part, _ = slices(args.ratings_csv, args.seed)
    cfg = ModelConfig.from_dict({**ModelConfig().to_dict(), **json.loads(args.model)})
    torch.manual_seed(args.seed)
    items = sp.csr_matrix(fit_part.T)  # (I, U)
    n_items, n_users = items.shape
    d = cfg.item_codes
    v = torch.nn.Parameter(torch.randn(n_users, d) * 0.03)
    c = torch.nn.Parameter(torch.zeros(d))
    w = torch.nn.Parameter(torch.randn(d, n_users) * 0.03)
    b = torch.nn.Parameter(torch.zeros(n_users))
    opt = torch.optim.Adam([v, c, w, b], lr=cfg.item_code_lr)
    for _ in range(cfg.item_code_epochs):
        order = torch.randperm(n_items).numpy()
        for start in range(0, n_items, cfg.item_code_batch):
            batch = order[start : start + cfg.item_code_batch]
            x, mk = densify(items, batch)
            out = torch.sigmoid(x @ v + c) @ w + b
            l2 = (v.square().sum() + w.square().sum()) * (batch.size / n_items)
            loss = ((out - x) * mk).square().sum() + 0.5 * cfg.item_code_l2 * l2
            opt.zero_grad()
            loss.backward()
            opt.step()
    coo = val.tocoo()
    with torch.no_grad():
        x, _ = densify(items, np.arange(n_items))
        codes = torch.sigmoid(x @ v + c)  # (I, d)
        trained = (codes @ w + b).numpy()  # (I, U)
    print(
        json.dumps(
            {"seed": args.seed, "trained_rows_rmse": rmse_at(trained[coo.col, coo.row], val)}
        )
    )
    mu, item_bias = bias_statistics(fit_part, cfg.item_bias_reg)
    offsets = user_offsets(fit_part, mu, item_bias, cfg.user_bias_reg)
    f = sp.coo_matrix(fit_part)
    resid = f.data - mu - item_bias[f.col] - offsets[f.row]
    lengths = np.diff(fit_part.indptr).tolist()
    for lam in args.lambdas:
        vectors = fold_in_codes(
            codes, torch.from_numpy(f.col).long(), torch.from_numpy(resid).float(), lengths, lam
        ).numpy()  # (U, d)
        signal = np.einsum("nd,nd->n", vectors[coo.row], codes.numpy()[coo.col])
        pred = mu + item_bias[coo.col] + offsets[coo.row] + signal
        print(json.dumps({"seed": args.seed, "lambda": lam, "fold_in_rmse": rmse_at(pred, val)}))


def validate(args: argparse.Namespace) -> None:
    rest, val, fit_part, stop = slices(args.ratings_csv, args.seed)
    overrides: dict[str, Any] = {"progress": False, "log_file": "/dev/null", "seed": args.seed}
    cfg = with_overrides(preset("default"), {**overrides, "model": json.loads(args.model)})
    started = time.perf_counter()
    model, history = fit(fit_part, stop, cfg)
    seconds = time.perf_counter() - started
    bias = BiasBaseline().fit(rest)
    for lam in args.lambdas:
        model.config.item_code_lambda = lam
        facts = model.calibrate_rating_paths(fit_part, stop)
        predict_rows, _ = autoencoder_scorer(model, rest)
        errors, _ = rating_errors(predict_rows, bias, rest, val)
        record = {
            "seed": args.seed,
            "model": json.loads(args.model),
            "lambda": lam,
            "validation_rmse": round(errors["rmse"], 4),
            "calibration": {k: round(v, 4) for k, v in facts.items()},
            "train_seconds": round(seconds, 1),
            "best_epoch": history[-1].get("best_epoch"),
        }
        print(json.dumps(record), flush=True)


def synthetic(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    n_users, n_ratings = 2000, 200_000
    users = rng.integers(0, n_users, n_ratings)
    movies = rng.zipf(1.3, n_ratings) % args.movies
    values = rng.integers(1, 6, n_ratings).astype(np.float32)
    m = sp.csr_matrix((values, (users, movies)), shape=(n_users, args.movies))
    m.sum_duplicates()
    m.data = np.clip(m.data, 1, 5)
    model = Autoencoder.from_data(m, ModelConfig()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = save(tmp, model, {"movie_ids": list(range(args.movies))})
        compare(Recommender.from_checkpoint(path), m)


def serve(args: argparse.Namespace) -> None:
    rec = Recommender.from_checkpoint(args.checkpoint)
    compare(rec, sp.csr_matrix(ratings_from_csv(args.ratings_csv).matrix))


def compare(rec: Recommender, m: sp.csr_matrix) -> None:
    """Per-user milliseconds of both serving paths, item-code path on and off."""
    users = np.random.default_rng(0).choice(m.shape[0], 64, replace=False)
    encoded = [
        (
            m.indices[m.indptr[u] : m.indptr[u + 1]].astype(np.int64),
            m.data[m.indptr[u] : m.indptr[u + 1]],
        )
        for u in users
    ]
    allowed = np.ones(rec.n_items, dtype=bool)

    def full_then_gather(batch: list, ks: list, masks: list) -> np.ndarray:
        pred, scores = rec._forward(batch)  # every rating of the catalogue
        blocked = torch.from_numpy(~masks[0]).expand(len(batch), -1).clone()
        seg = torch.repeat_interleave(
            torch.arange(len(batch)), torch.tensor([len(c) for c, _ in batch])
        )
        blocked[seg, torch.from_numpy(np.concatenate([c for c, _ in batch]))] = True
        with torch.inference_mode():
            top = torch.topk(scores.masked_fill_(blocked, -math.inf), max(ks), dim=1)
            return pred.gather(1, top.indices).numpy()

    def per_user_ms(fn: Any, size: int) -> float:
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            for start in range(0, len(encoded), size):
                batch = encoded[start : start + size]
                fn(batch, [10] * len(batch), [allowed] * len(batch))
            best = min(best, (time.perf_counter() - started) / len(encoded) * 1000)
        return best

    first = encoded[:8]
    got = rec.top_k_rows(first, [10] * 8, [allowed] * 8)
    for (cols, vals), (ids, _, preds) in zip(first, got, strict=True):
        ids_rated = rec.movie_ids[cols].tolist()  # score() takes movie ids, not columns
        full, _ = rec.score(list(zip(ids_rated, vals.tolist(), strict=True)))
        np.testing.assert_allclose(preds, full[rec.columns(ids)], rtol=1e-5, atol=1e-5)
    gain = rec.model.item_code_gain
    weight = float(gain) if gain is not None else 0.0
    config = rec.model.config
    rerank = config.rerank_weight
    runs = [("on", weight, rerank), *([("on", weight, 0.0)] if rerank else []), ("off", 0.0, 0.0)]
    for label, value, rerank_weight in runs:
        if gain is not None:
            gain.fill_(value)
        config.rerank_weight = rerank_weight
        for size in (1, 8):
            per_user_ms(rec.top_k_rows, size)  # warm-up
            print(
                json.dumps(
                    {
                        "item_codes": label,
                        "rerank_weight": rerank_weight,
                        "rerank_candidates": config.rerank_candidates if rerank_weight else 0,
                        "batch": size,
                        "full_ratings_ms_per_user": round(per_user_ms(full_then_gather, size), 3),
                        "top_k_rows_ms_per_user": round(per_user_ms(rec.top_k_rows, size), 3),
                    }
                ),
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("rows", "validate", "serve", "synthetic"):
        q = sub.add_parser(name)
        q.add_argument("--ratings-csv", type=Path, required=name != "synthetic")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--model", default="{}", help="JSON object of ModelConfig overrides")
        q.add_argument(
            "--lambdas", type=lambda s: [float(v) for v in s.split(",")], default=[100.0]
        )
        if name == "serve":
            q.add_argument("checkpoint", type=Path)
        if name == "synthetic":
            q.add_argument("--movies", type=int, default=87_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    modes = {"rows": rows, "validate": validate, "serve": serve, "synthetic": synthetic}
    modes[args.mode](args)


if __name__ == "__main__":
    main()
