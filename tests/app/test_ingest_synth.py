"""Synthetic data: deterministic per seed, distinct pairs, valid ratings, long tails; streamed
into the store or written as CSV that imports back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.ingest.formats import custom_csv
from app.ingest.importer import import_dataset
from app.ingest.synth import (
    SynthConfig,
    allocate_counts,
    generate,
    synthesise_into_store,
    write_csv,
)
from tests.app.ingest_fixtures import snapshot

CFG = SynthConfig(users=400, movies=300, ratings=20_000, seed=7, chunk_users=64)


def collect(cfg: SynthConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies, chunks = generate(cfg)
    return movies, pd.concat(list(chunks), ignore_index=True)


def test_same_seed_same_data_other_seed_other_data() -> None:
    movies_a, ratings_a = collect(CFG)
    movies_b, ratings_b = collect(CFG)
    _, ratings_c = collect(
        SynthConfig(users=400, movies=300, ratings=20_000, seed=8, chunk_users=64)
    )
    pd.testing.assert_frame_equal(movies_a, movies_b)
    pd.testing.assert_frame_equal(ratings_a, ratings_b)
    assert not ratings_a[["user_id", "movie_id"]].equals(ratings_c[["user_id", "movie_id"]])


def test_structure() -> None:
    movies, ratings = collect(CFG)
    assert len(ratings) == CFG.ratings
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    assert ratings["rating"].between(0.5, 5.0).all()
    assert (ratings["rating"] * 2 == np.round(ratings["rating"] * 2)).all()
    assert set(ratings["user_id"]) == set(range(1, CFG.users + 1))
    assert ratings["movie_id"].between(1, CFG.movies).all()
    assert ratings.groupby("user_id").size().min() >= CFG.min_per_user
    assert ratings["timestamp"].between(CFG.first_time, CFG.last_time).all()
    assert 3.0 < ratings["rating"].mean() < 4.0
    assert movies["movie_id"].tolist() == list(range(1, CFG.movies + 1))
    assert movies["genres"].str.len().gt(0).all() and movies["year"].between(1920, 2023).all()


def test_long_tails() -> None:
    _, ratings = collect(CFG)
    per_movie = ratings.groupby("movie_id").size().sort_values(ascending=False)
    top_tenth = per_movie.iloc[: CFG.movies // 10].sum() / len(ratings)
    assert top_tenth > 0.3  # a uniform catalogue would give 0.1
    per_user = ratings.groupby("user_id").size()
    assert per_user.max() > 4 * per_user.median()


def test_allocate_counts_respects_total_floor_and_cap() -> None:
    weights = np.random.default_rng(0).lognormal(0, 2, 1000)
    counts = allocate_counts(50_000, weights, floor=20, cap=80)
    assert counts.sum() == 50_000 and counts.min() >= 20 and counts.max() <= 80
    with pytest.raises(ValueError):
        allocate_counts(10_001, np.ones(100), floor=1, cap=100)


def test_dense_small_catalogue_has_no_duplicates() -> None:
    """Users who rate nearly every movie go through the exact sampler."""
    _, ratings = collect(SynthConfig(users=20, movies=30, ratings=580, seed=3, min_per_user=25))
    assert len(ratings) == 580
    assert not ratings.duplicated(["user_id", "movie_id"]).any()


def test_impossible_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        SynthConfig(users=2, movies=3, ratings=7).validate()


def test_synth_into_store_and_csv_round_trip(database, tmp_path: Path) -> None:
    cfg = SynthConfig(users=50, movies=40, ratings=1_200, seed=1, chunk_users=16)
    result = synthesise_into_store(database.url, cfg, progress=False)
    assert (result.movies_added, result.users_added, result.ratings_added) == (40, 50, 1_200)
    direct = snapshot(database.url)
    with pytest.raises(ValueError, match="already holds 40 movies"):
        synthesise_into_store(database.url, cfg, progress=False)

    database.reset()
    movies_csv, ratings_csv = [p.name for p in write_csv(cfg, tmp_path, progress=False)]
    assert (movies_csv, ratings_csv) == ("movies.csv", "ratings.csv")
    import_dataset(
        database.url, custom_csv(tmp_path / "ratings.csv", tmp_path / "movies.csv"), progress=False
    )
    assert snapshot(database.url) == direct
