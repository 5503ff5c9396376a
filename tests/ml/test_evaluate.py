"""A quick evaluation run on a tiny synthetic catalogue with a planted taste structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ml.data import RatingsData
from ml.evaluate import MODELS, RANKING_METRICS, main, ratings_from_csv, run_evaluation
from ml.model import ModelConfig


def planted_data(n_users: int = 60, n_items: int = 24, seed: int = 0) -> RatingsData:
    """Two taste groups, each liking (4-5 stars) its own half of the catalogue and rating a few
    movies of the other half low; popularity is flat across the two halves."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    half = n_items // 2
    for u in range(n_users):
        own = np.arange(half) + (0 if u % 2 == 0 else half)
        other = np.setdiff1d(np.arange(n_items), own)
        dense[u, rng.choice(own, 8, replace=False)] = rng.choice([4.0, 5.0], 8)
        dense[u, rng.choice(other, 2, replace=False)] = rng.choice([1.0, 2.0], 2)
    return RatingsData(
        sp.csr_matrix(dense),
        np.arange(1, n_users + 1, dtype=np.int64),
        np.arange(101, 101 + n_items, dtype=np.int64),
        None,
    )


def test_quick_evaluation_writes_json_markdown_and_png(tmp_path: Path) -> None:
    report = run_evaluation(planted_data(), seeds=(0, 1), out_dir=tmp_path, quick=True)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["quick"] is True
    assert set(saved["ranking"]) == set(MODELS)
    assert set(saved["rating"]) == {"bias", "seed", "default"}
    for name in MODELS:
        for key in RANKING_METRICS:
            stats = saved["ranking"][name][key]
            assert len(stats["values"]) == 2 and 0.0 <= stats["mean"] <= 1.0
    for name in saved["rating"]:
        assert 0.0 < saved["rating"][name]["rmse"]["mean"] < 4.0
    # The planted taste structure is invisible to popularity, plain to EASE.
    ndcg = report["ranking"]
    assert ndcg["ease"]["ndcg@10"]["mean"] > ndcg["popularity"]["ndcg@10"]["mean"] + 0.1
    table = (tmp_path / "evaluation.md").read_text()
    assert "| EASE (λ tuned) |" in table and "±" in table
    assert (tmp_path / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "training.jsonl").exists()
    # The autoencoder's EASE path is tuned like the EASE baseline, on the same slice.
    for run in saved["runs"]["ranking"]:
        assert run["default"]["wide_lambda"] == run["ease"]["lambda"]
        assert run["default"]["wide_mix"] in ModelConfig().wide_mixes


def test_command_line_runs_on_csv_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = planted_data()
    coo = data.matrix.tocoo()
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame(
        {
            "user_id": data.user_ids[coo.row],
            "movie_id": data.movie_ids[coo.col],
            "rating": coo.data,
        }
    ).to_csv(ratings, index=False)
    movies = tmp_path / "movies.csv"
    pd.DataFrame({"movie_id": [*data.movie_ids, 999], "title": "x"}).to_csv(movies, index=False)
    loaded = ratings_from_csv(ratings, movies)
    assert loaded.matrix.shape == (60, 25)  # the unrated movie 999 is in the catalogue
    out = tmp_path / "report"
    code = main(
        [
            "--ratings-csv",
            str(ratings),
            "--movies-csv",
            str(movies),
            "--out",
            str(out),
            "--seeds",
            "3",
            "--models",
            "bias",
            "popularity",
            "ease",
        ]
    )
    assert code == 0
    assert "| popularity |" in capsys.readouterr().out
    assert json.loads((out / "evaluation.json").read_text())["seeds"] == [3]


def test_bad_input_gives_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user,movie\n1,2\n")
    assert main(["--ratings-csv", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "missing columns" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown models"):
        run_evaluation(planted_data(), models=("bias", "svd"))
