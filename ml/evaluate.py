"""The offline evaluation: the autoencoders side by side with the baselines, on two protocols.

Protocol (a), rating prediction: a random ``test_frac`` of *all* ratings is held out; RMSE and
MAE over every held-out rating, each predicted from its user's training row. A held-out rating
whose user or movie has no training rating is still counted: the bias baseline answers it
(global mean + the bias that is known, or the global mean alone), as the service does.

Protocol (b), top-N ranking: ``test_frac`` of *each user's* ratings is held out; for every user
every movie not rated in training is ranked (no sampled negatives). A held-out movie is relevant
when rated ≥ 4; users with no relevant held-out movie are skipped. NDCG@10, Recall@20
(denominator min(20, #relevant)), Precision@10, MAP@10 and catalogue coverage (share of the
catalogue in at least one user's top 10).

Every hyper-parameter is chosen on data carved out of the *training* part only: EASE's λ on a
per-user validation slice of it, the autoencoders' early stopping on ``ml.data.validation_split``
of it. The test part is read once, to score. Each protocol is repeated for every seed (a new split
and a new initialisation) and reported as mean ± std.

``python -m ml.evaluate --ratings-csv FILE [--movies-csv FILE] --out DIR`` runs it on CSV files
without a store.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from ml import metrics
from ml.baselines import EASE, BiasBaseline, Popularity
from ml.data import DataError, RatingsData, build_matrix, densify, split_per_user, split_ratings
from ml.data import validation_split as early_stopping_split
from ml.fit.config import TrainConfig, preset
from ml.fit.finish import choose_ranking_weights
from ml.fit.pipeline import fit
from ml.model import Autoencoder, ranks_as_scores

MODELS = ("bias", "popularity", "ease", "seed", "default")
RATING_MODELS = ("bias", "seed", "default")  # the models that predict ratings
AUTOENCODERS = ("seed", "default")  # trained with ml.fit.pipeline.fit from the preset of that name
RATING_METRICS = ("rmse", "mae")
RANKING_METRICS = ("ndcg@10", "recall@20", "precision@10", "map@10", "coverage@10")
LABELS = {
    "bias": "bias baseline",
    "popularity": "popularity",
    "ease": "EASE (λ tuned)",
    "seed": "tutorial SAE (seed preset)",
    "default": "autoencoder (default preset)",
}
EASE_LAMBDAS = (50.0, 100.0, 200.0, 350.0, 500.0, 750.0, 1000.0, 2000.0)
BATCH_USERS = 256  # users scored per dense (B, I) batch
TOP_RANKED = 20  # positions of the served ranking the ranking metrics read (Recall@20)

Scorer = Callable[[np.ndarray], np.ndarray]  # user rows → (B, I) scores


# ---------------------------------------------------------------------------- scoring helpers
def autoencoder_scorer(model: Autoencoder, train: sp.csr_matrix) -> tuple[Scorer, Scorer]:
    """(predicted ratings, ranking scores) of given user rows, each from the user's train row."""

    @torch.no_grad()
    def heads(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, m = densify(train, rows)  # (B, I)
        pred, scores = model.eval()(x, m)
        return pred.numpy(), scores.numpy()

    def ranked(rows: np.ndarray) -> np.ndarray:
        if not model.config.rerank_weight:  # the full scores (ties: lower column first)
            return heads(rows)[1]
        # The served ranking (re-ranking included) as scores of its top TOP_RANKED positions.
        cols, vals = model.top_k_csr(train[rows], TOP_RANKED)
        return ranks_as_scores(cols, vals, model.n_items)

    return (lambda rows: heads(rows)[0]), ranked


def _on_rows(score: Callable[[sp.csr_matrix], np.ndarray], train: sp.csr_matrix) -> Scorer:
    """A baseline's ``score(rows_csr)`` as a scorer of user row indices of ``train``."""
    return lambda rows: score(train[rows])


def rating_errors(
    predict_rows: Scorer, fallback: BiasBaseline, train: sp.csr_matrix, test: sp.csr_matrix
) -> tuple[dict[str, float], int]:
    """RMSE and MAE over every test rating (protocol a). Ratings whose user or movie has no
    training rating are answered by ``fallback``; returns (metrics, how many were)."""
    test = sp.csr_matrix(test)
    coo = test.tocoo()
    known_user = np.diff(train.indptr) > 0
    known_item = np.diff(sp.csc_matrix(train).indptr) > 0
    cold = ~(known_user[coo.row] & known_item[coo.col])  # (nnz,)
    predicted = fallback.predict(coo.row, coo.col)
    warm_users = np.unique(coo.row[~cold])
    for start in range(0, warm_users.size, BATCH_USERS):
        rows = warm_users[start : start + BATCH_USERS]
        dense = predict_rows(rows)  # (B, I)
        local = np.full(train.shape[0], -1)
        local[rows] = np.arange(rows.size)
        sel = ~cold & (local[coo.row] >= 0)
        predicted[sel] = dense[local[coo.row[sel]], coo.col[sel]]
    return (
        {"rmse": metrics.rmse(predicted, coo.data), "mae": metrics.mae(predicted, coo.data)},
        int(cold.sum()),
    )


def ranking_metrics(score_rows: Scorer, train: sp.csr_matrix, test: sp.csr_matrix) -> dict:
    """NDCG@10, Recall@20, Precision@10, MAP@10 and coverage@10 (protocol b) over the users
    with a held-out rating; every movie not rated in training competes."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    per_user: dict[str, list[np.ndarray]] = {k: [] for k in RANKING_METRICS[:-1]}
    tops: list[np.ndarray] = []
    for start in range(0, users.size, BATCH_USERS):
        rows = users[start : start + BATCH_USERS]
        scores = metrics.mask_seen(score_rows(rows), train[rows])  # (B, I)
        relevant = metrics.relevance(test[rows])  # (B, I)
        per_user["ndcg@10"].append(metrics.ndcg_at_k(scores, relevant, 10))
        per_user["recall@20"].append(metrics.recall_at_k(scores, relevant, 20))
        per_user["precision@10"].append(metrics.precision_at_k(scores, relevant, 10))
        per_user["map@10"].append(metrics.map_at_k(scores, relevant, 10))
        tops.append(metrics.top_k(scores, 10))
    out = {k: float(np.nanmean(np.concatenate(v))) for k, v in per_user.items()}
    out["coverage@10"] = metrics.coverage(np.concatenate(tops), train.shape[1])
    out["users"] = int(sum(np.isfinite(np.concatenate(per_user["ndcg@10"]))))
    return out


# ---------------------------------------------------------------------------- one split
def _train_autoencoder(
    name: str,
    train: sp.csr_matrix,
    config: TrainConfig,
    seed: int,
    monitor: str,
    log: Path | None,
    ease_lambdas: Sequence[float] = (),
) -> tuple[Autoencoder, dict[str, Any]]:
    """Fit one autoencoder with early stopping on a slice of ``train``; returns it and facts.

    The model is then finished on the early-stopping slice, which its weights never saw, as
    ``ml.fit.finish.finish`` does: the weights of its rating paths are refitted by least squares
    (``Autoencoder.calibrate_rating_paths``); with ``ease_lambdas`` (the ranking protocol) the
    weight of the deep correction beside EASE (``Autoencoder.choose_wide_mix``) and that of
    the re-ranking by predicted ratings (``Autoencoder.choose_rerank``) are chosen, then the
    EASE path is tuned and solved again on all of ``train`` (:func:`refit_wide_path`)."""
    cfg = dataclasses.replace(
        config,
        seed=seed,
        monitor=monitor if config.patience else config.monitor,
        progress=False,
        log_file=str(log) if log else os.devnull,  # per-epoch lines: to the report or nowhere
    )
    fit_part, stop_part = early_stopping_split(train, cfg.val_frac, seed)
    started = time.perf_counter()
    model, history = fit(fit_part, stop_part if stop_part.nnz else None, cfg)
    best = next((h["best_epoch"] for h in reversed(history) if "best_epoch" in h), len(history))
    facts: dict[str, Any] = {"epochs_run": len(history), "best_epoch": best}
    facts["train_seconds"] = round(time.perf_counter() - started, 2)
    if stop_part.nnz:
        facts["calibration"] = model.calibrate_rating_paths(fit_part, stop_part)
    if ease_lambdas:
        facts |= choose_ranking_weights(model, fit_part, stop_part)
        facts |= refit_wide_path(model, train, seed, ease_lambdas)
    return model, facts


def refit_wide_path(
    model: Autoencoder, train: sp.csr_matrix, seed: int, lambdas: Sequence[float]
) -> dict[str, Any]:
    """After early stopping, tune the EASE path's λ and solve it again on the *whole* training
    part, by the procedure and candidates of the EASE baseline (same slice for the same seed):
    the closed form needs no early stopping, so it should not lose the slice that the deep part
    used for it. Returns the chosen λ as a fact of the run ({} for a model without the path)."""
    if model.wide is None:
        return {}
    model.config.wide_lambdas = tuple(float(v) for v in lambdas)
    model.tune_closed_form_paths(train, seed=seed, rating_path=False)
    model.fit_closed_form_paths(train, rating_path=False)
    return {"wide_lambda": model.config.wide_lambda}


def evaluate_rating_split(
    m: sp.csr_matrix,
    seed: int,
    configs: dict[str, TrainConfig],
    models: Sequence[str],
    test_frac: float,
    log: Path | None,
) -> dict[str, dict[str, Any]]:
    """Protocol (a) for one seed: {model: {rmse, mae, cold_ratings, ...}}."""
    train, test = split_ratings(m, test_frac, seed)
    bias = BiasBaseline().fit(train)
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        if name == "bias":
            values, cold = rating_errors(_on_rows(bias.score, train), bias, train, test)
            out[name] = {**values, "cold_ratings": cold}
        elif name in AUTOENCODERS:
            model, facts = _train_autoencoder(name, train, configs[name], seed, "rmse", log)
            predict_rows, _ = autoencoder_scorer(model, train)
            values, cold = rating_errors(predict_rows, bias, train, test)
            out[name] = {**values, "cold_ratings": cold, **facts}
    return out


def evaluate_ranking_split(
    m: sp.csr_matrix,
    seed: int,
    configs: dict[str, TrainConfig],
    models: Sequence[str],
    test_frac: float,
    ease_lambdas: Sequence[float],
    log: Path | None,
) -> dict[str, dict[str, Any]]:
    """Protocol (b) for one seed: {model: {ndcg@10, recall@20, ...}}."""
    train, test = split_per_user(m, test_frac, seed)
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        if name == "bias":
            bias = BiasBaseline().fit(train)
            out[name] = ranking_metrics(_on_rows(bias.score, train), train, test)
        elif name == "popularity":
            pop = Popularity().fit(train)
            out[name] = ranking_metrics(_on_rows(pop.score, train), train, test)
        elif name == "ease":
            ease, tried = EASE.tuned(train, ease_lambdas, seed=seed)
            out[name] = {
                **ranking_metrics(_on_rows(ease.score, train), train, test),
                "lambda": ease.lam,
                "validation_ndcg@10": {str(k): v for k, v in tried.items()},
            }
        elif name in AUTOENCODERS:
            model, facts = _train_autoencoder(
                name, train, configs[name], seed, configs[name].monitor, log, ease_lambdas
            )
            _, score_rows = autoencoder_scorer(model, train)
            out[name] = {**ranking_metrics(score_rows, train, test), **facts}
    return out


# ---------------------------------------------------------------------------- the whole run
def _quick(config: TrainConfig) -> TrainConfig:
    """A few epochs in batches of at least 32: for tests and smoke runs."""
    return dataclasses.replace(
        config, epochs=min(config.epochs, 3), batch_size=max(config.batch_size, 32), patience=0
    )


def _summary(per_seed: list[dict[str, dict[str, Any]]], keys: Sequence[str]) -> dict:
    """{model: {metric: {mean, std, values}}} over the seeds."""
    out: dict[str, dict[str, Any]] = {}
    for name in per_seed[0]:
        out[name] = {}
        for key in keys:
            values = [run[name][key] for run in per_seed if key in run[name]]
            if values:
                out[name][key] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                    "values": values,
                }
    return out


def run_evaluation(
    data: RatingsData,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: Path | str | None = None,
    quick: bool = False,
    *,
    models: Sequence[str] = MODELS,
    configs: dict[str, TrainConfig] | None = None,
    test_frac: float = 0.2,
) -> dict[str, Any]:
    """Evaluate ``models`` on both protocols for every seed; returns the report and, with
    ``out_dir``, writes ``evaluation.json``, ``evaluation.md`` and ``evaluation.png`` there.

    ``configs`` overrides the training configuration of the autoencoders (keys "seed",
    "default"); ``quick`` trains them for at most 3 epochs (smoke runs, tests)."""
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    if not seeds:
        raise ValueError("give at least one seed")
    if data.matrix.nnz < 10:
        raise ValueError("too few ratings to evaluate (need at least 10)")
    configs = {name: preset(name) for name in AUTOENCODERS} | dict(configs or {})
    if quick:
        configs = {name: _quick(cfg) for name, cfg in configs.items()}
    out_path = Path(out_dir) if out_dir is not None else None
    log = None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        log = out_path / "training.jsonl"
        log.unlink(missing_ok=True)
    m = sp.csr_matrix(data.matrix, dtype=np.float32)
    started = time.perf_counter()
    rating_runs, ranking_runs = [], []
    for seed in tqdm(list(seeds), desc="evaluation seeds", unit="seed"):
        rating_runs.append(evaluate_rating_split(m, seed, configs, models, test_frac, log))
        lambdas = EASE_LAMBDAS[::3] if quick else EASE_LAMBDAS
        ranking_runs.append(
            evaluate_ranking_split(m, seed, configs, models, test_frac, lambdas, log)
        )
    report = {
        "dataset": data.snapshot(),
        "seeds": list(seeds),
        "test_frac": test_frac,
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "configs": {name: cfg.to_dict() for name, cfg in configs.items() if name in models},
        "rating": _summary(rating_runs, RATING_METRICS) if rating_runs[0] else {},
        "ranking": _summary(ranking_runs, RANKING_METRICS),
        "runs": {"rating": rating_runs, "ranking": ranking_runs},
    }
    if out_path is not None:
        write_report(report, out_path)
    return report


# ---------------------------------------------------------------------------- outputs
def _cell(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "—"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: one row per model, mean ± std over the seeds."""
    keys = [*RATING_METRICS, *RANKING_METRICS]
    names = [n for n in MODELS if n in report["ranking"] or n in report["rating"]]
    lines = [
        f"Evaluation on {report['dataset']['users']} users, {report['dataset']['items']} movies, "
        f"{report['dataset']['ratings']} ratings; seeds {report['seeds']}; "
        f"test fraction {report['test_frac']}{' (quick run)' if report['quick'] else ''}.",
        "",
        "| model | " + " | ".join(k.upper() if k in RATING_METRICS else k for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name in names:
        cells = [_cell(report["rating"].get(name, {}).get(k)) for k in RATING_METRICS]
        cells += [_cell(report["ranking"].get(name, {}).get(k)) for k in RANKING_METRICS]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart_png(report: dict[str, Any], path: Path) -> None:
    """Bars of RMSE (protocol a) and NDCG@10 (protocol b) per model with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, section, key in ((axes[0], "rating", "rmse"), (axes[1], "ranking", "ndcg@10")):
        names = [n for n in MODELS if key in report[section].get(n, {})]
        means = [report[section][n][key]["mean"] for n in names]
        stds = [report[section][n][key]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=25, ha="right")
        ax.set_title(f"{key.upper() if section == 'rating' else key} (mean ± std over seeds)")
        for i, v in enumerate(means):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """evaluation.json, evaluation.md and evaluation.png in ``out_dir``."""
    paths = {
        "json": out_dir / "evaluation.json",
        "markdown": out_dir / "evaluation.md",
        "png": out_dir / "evaluation.png",
    }
    paths["json"].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown_table(report))
    bar_chart_png(report, paths["png"])
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


# ---------------------------------------------------------------------------- files → data
def ratings_from_csv(ratings_csv: Path, movies_csv: Path | None = None) -> RatingsData:
    """RatingsData from ``user_id,movie_id,rating[,timestamp]`` (header required) and optional
    ``movie_id,...``; the catalogue is the union of both files' movie ids."""
    frame = pd.read_csv(ratings_csv)
    missing = {"user_id", "movie_id", "rating"} - set(frame.columns)
    if missing:
        raise ValueError(f"{ratings_csv}: missing columns {sorted(missing)}")
    if frame.empty:
        raise ValueError(f"{ratings_csv}: no ratings")
    movie_ids = frame["movie_id"].to_numpy(np.int64)
    if movies_csv is not None:
        movies = pd.read_csv(movies_csv)
        if "movie_id" not in movies.columns:
            raise ValueError(f"{movies_csv}: missing column 'movie_id'")
        movie_ids = np.concatenate([movie_ids, movies["movie_id"].to_numpy(np.int64)])
    catalogue = np.unique(movie_ids)
    matrix, user_ids = build_matrix(
        frame["user_id"].to_numpy(np.int64),
        frame["movie_id"].to_numpy(np.int64),
        frame["rating"].to_numpy(np.float64),
        catalogue,
    )
    return RatingsData(matrix, user_ids, catalogue, None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ml.evaluate``: the evaluation on CSV files, report written to --out."""
    parser = argparse.ArgumentParser(
        prog="python -m ml.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ratings-csv", type=Path, required=True, help="user_id,movie_id,rating")
    parser.add_argument("--movies-csv", type=Path, help="movie_id,... (adds unrated movies)")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="at most 3 epochs per autoencoder")
    parser.add_argument(
        "--seed-epochs", type=int, help="epochs of the tutorial model (its preset: 200)"
    )
    args = parser.parse_args(argv)
    configs = {}
    if args.seed_epochs is not None:
        configs["seed"] = dataclasses.replace(preset("seed"), epochs=args.seed_epochs)
    try:
        data = ratings_from_csv(args.ratings_csv, args.movies_csv)
        report = run_evaluation(
            data, args.seeds, args.out, args.quick, models=args.models, configs=configs
        )
    except (OSError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
