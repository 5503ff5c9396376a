"""`movierec train|recommend|predict` end to end on a tiny store (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from app.cli import cli
from app.db.models import ModelVersion
from app.db.session import session_scope

N_USERS, N_MOVIES = 24, 18
runner = CliRunner()


def seed_store(engine) -> list[tuple[int, int, float]]:
    """A tiny store: 24 users, 18 movies, 7 ratings each, plus user 99 with no ratings."""
    rng = np.random.default_rng(4)
    ratings = [
        (u, m, float(rng.integers(1, 11)) / 2)
        for u in range(1, N_USERS + 1)
        for m in rng.choice(np.arange(1, N_MOVIES + 1), size=7, replace=False).tolist()
    ]
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO movies (id, title, genres) VALUES (:id, :t, 'Drama')"),
            [{"id": m, "t": f"Film number {m}"} for m in range(1, N_MOVIES + 1)],
        )
        conn.execute(
            text("INSERT INTO users (id) VALUES (:id)"),
            [{"id": u} for u in [*range(1, N_USERS + 1), 99]],
        )
        conn.execute(
            text("INSERT INTO ratings (user_id, movie_id, rating) VALUES (:u, :m, :r)"),
            [{"u": u, "m": m, "r": r} for u, m, r in ratings],
        )
    return ratings


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(
        'device = "cpu"\nbatch_size = 8\nprogress = false\nthreads = 1\nval_frac = 0.2\n'
        "[model]\nhidden = [8]\n"
    )
    return path


def invoke(*args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_train_recommend_predict_end_to_end(env, small_config: Path, tmp_path: Path) -> None:
    ratings = seed_store(env.engine)

    result = invoke("recommend", "1")
    assert result.exit_code == 1 and "no active model" in result.output

    result = invoke("train", "--epochs", "2", "--config", str(small_config))
    assert result.exit_code == 0, result.output
    assert "rmse=" in result.output and "ndcg@10=" in result.output and "activated" in result.output
    phases = ("loading", "tuning", "item codes", "epochs", "finishing", "writing", "registering")
    for phase in phases:  # what training is doing, phase by phase
        assert f"{phase} done in" in result.output, result.output
    with session_scope(env.url) as session:
        versions = list(session.scalars(select(ModelVersion)))
        assert len(versions) == 1 and versions[0].is_active
        assert Path(versions[0].path).is_dir()
        assert "validation" in versions[0].metrics

    result = invoke("train", "--if-no-model")
    assert result.exit_code == 0 and "nothing to train" in result.output

    result = invoke("recommend", "1", "-n", "3")
    assert result.exit_code == 0, result.output
    rated = {m for u, m, _ in ratings if u == 1}
    lines = [ln for ln in result.output.splitlines() if "Film number" in ln]
    assert len(lines) == 3
    assert not {int(ln.split()[1]) for ln in lines} & rated

    result = invoke("recommend", "99", "-n", "2")
    assert result.exit_code == 0 and "popular" in result.output

    result = invoke("recommend", "12345")
    assert result.exit_code == 1 and "unknown user 12345" in result.output

    out = tmp_path / "all.csv"
    result = invoke("recommend", "--all-users", "-n", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["user_id", "rank", "movie_id", "score"]
    assert len(rows) == N_USERS * 4
    by_user = {(int(r["user_id"]), int(r["movie_id"])) for r in rows}
    assert not by_user & {(u, m) for u, m, _ in ratings}

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n1,777\n99,3\n4242,777\n2,5\n")
    preds = tmp_path / "preds.csv"
    result = invoke("predict", str(pairs), "--out", str(preds))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(preds.open()))
    assert [(r["user_id"], r["movie_id"]) for r in rows] == [
        ("1", "2"),
        ("1", "777"),
        ("99", "3"),
        ("4242", "777"),
        ("2", "5"),
    ]
    assert [r["source"] for r in rows] == ["model", "bias", "bias", "global_mean", "model"]
    assert all(0.5 <= float(r["prediction"]) <= 5.0 for r in rows)

    report = tmp_path / "report"
    args = ["--seeds", "1", "--model", "bias", "--model", "popularity", "--out", str(report)]
    result = invoke("evaluate", *args)
    assert result.exit_code == 0, result.output
    assert "bias baseline" in result.output and "popularity" in result.output
    assert (report / "evaluation.json").is_file()
    result = invoke("evaluate", "--version", "999")
    assert result.exit_code == 1 and "model version 999 does not exist" in result.output


def test_train_without_ratings_and_bad_inputs_fail_clearly(env, tmp_path: Path) -> None:
    result = invoke("train", "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 1 and "no ratings" in result.output

    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,movie_id\n1,2\n1,two\n")
    result = invoke("predict", str(bad), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 1 and f"{bad}:3:" in result.output

    bad.write_text("movie,user\n1,2\n")
    result = invoke("predict", str(bad), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 1 and f"{bad}:1:" in result.output

    result = invoke("recommend", "--all-users")
    assert result.exit_code == 1 and "--out" in result.output

    config = tmp_path / "c.json"
    config.write_text('{"epochz": 1}')
    result = invoke("train", "--config", str(config))
    assert result.exit_code == 1 and "epochz" in result.output


def test_train_on_a_store_too_small_to_validate_says_so(env, small_config: Path) -> None:
    """Three users with two ratings each: nothing can be held out. The command says so instead
    of printing an empty ``validation:`` line, and says the model is not validated."""
    with env.engine.begin() as conn:
        conn.execute(text("INSERT INTO movies (id, title, genres) VALUES (1, 'A', ''), "
                          "(2, 'B', ''), (3, 'C', '')"))  # fmt: skip
        conn.execute(text("INSERT INTO users (id) VALUES (1), (2), (3)"))
        conn.execute(
            text("INSERT INTO ratings (user_id, movie_id, rating) VALUES "
                 "(1, 1, 4), (1, 2, 3), (2, 1, 5), (2, 3, 2), (3, 2, 4), (3, 3, 5)")
        )  # fmt: skip
    first = invoke("train", "--config", str(small_config), "--epochs", "1")
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert "validation:" not in [line.strip() for line in lines]
    assert any(
        line.startswith("validation: none: the store is too small to validate on (3 users, 6 "
                        "ratings") for line in lines
    ), first.output  # fmt: skip
    assert "model version 1 activated (no active model; not validated)" in first.output

    second = invoke("train", "--config", str(small_config), "--epochs", "1")
    assert "model version 2 activated (not validated, nor is the active model)" in second.output
