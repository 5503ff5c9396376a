"""ml.progress: the phases of one training, each started and finished, with its progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml import progress
from ml.fit.pipeline import train_from_store
from tests.ml.test_data import insert_store
from tests.ml.test_train import tiny_config

PHASES = ["loading", "tuning", "item codes", "epochs", "finishing", "writing"]


def test_training_reports_each_phase_in_order(database, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    movies = list(range(1, 21))
    ratings = [
        (u, m, float(rng.integers(1, 11)) / 2)
        for u in range(1, 31)
        for m in rng.choice(movies, size=8, replace=False).tolist()
    ]
    insert_store(database.engine, movies=movies, ratings=ratings)
    reports: list[dict[str, Any]] = []
    config = tiny_config(epochs=3, val_frac=0.2, model={"item_code_epochs": 4})
    train_from_store(database.url, tmp_path, config, on_progress=reports.append)
    started = [r["phase"] for r in reports if r["done"] == 0 and not r["finished"]]
    finished = [r["phase"] for r in reports if r["finished"]]
    assert started == PHASES and finished[-1] == "writing"
    assert set(finished) == set(PHASES)  # ("tuning" also runs again inside "finishing")
    codes = [r for r in reports if r["phase"] == "item codes"]
    assert codes[-1] == {**codes[-1], "done": 4, "total": 4, "finished": True}
    epochs = [r for r in reports if r["phase"] == "epochs" and not r["finished"]]
    assert epochs[-1]["done"] == 3 and epochs[-1]["total"] == 3 and "loss" in epochs[-1]
    assert all(r["elapsed_s"] >= 0 for r in reports)


def test_phases_cost_nothing_without_a_reporter_and_read_as_lines() -> None:
    with progress.phase("item codes", total=20) as running:
        running.step(5)  # no reporter installed: nothing to do, nothing raised
    lines: list[str] = []
    with progress.reporting(lambda r: lines.append(progress.describe(r))):
        with progress.phase("item codes", total=20) as running:
            running.step(20)
        with progress.phase("loading"):
            pass
    assert lines[0] == "item codes 0/20, 0.0 s"
    assert lines[1].startswith("item codes 20/20, ")
    assert lines[2].startswith("item codes done in ") and lines[-1].startswith("loading done in")
