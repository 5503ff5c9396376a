"""ml.fit: the loss falls, the best epoch is restored, seeds repeat, store → checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ml import metrics
from ml.checkpoint import load
from ml.data import split_per_user
from ml.fit.config import PRESETS, TrainConfig, preset, read_config_file, with_overrides
from ml.fit.finish import finish
from ml.fit.loop import Dist, _ndcg_recall_sums, lr_factor, shard, validate
from ml.fit.pipeline import best_metrics, fit, train_from_store
from ml.model import ModelConfig
from tests.ml.test_checkpoint import TINY
from tests.ml.test_data import insert_store, random_matrix


def tiny_config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        epochs=6, batch_size=8, lr=3e-3, device="cpu", progress=False, threads=1, model=TINY
    )
    return with_overrides(base, dict(changes))


@pytest.fixture(scope="module")
def split():
    return split_per_user(random_matrix(48, 30, density=0.35, seed=5), 0.2, seed=0)


def test_training_loss_falls(split) -> None:
    train, _ = split
    config = tiny_config(epochs=10, lr=0.01, model={"input_dropout": 0.0}, schedule="constant")
    _, history = fit(train, None, config)
    losses = [h["train_loss"] for h in history]
    assert len(history) == 10
    assert losses[-1] < 0.9 * losses[0]


def test_best_epoch_is_restored_and_early_stopping_ends_the_run(split) -> None:
    train, val = split
    # A learning rate far too high for this data: validation gets worse and training stops.
    config = tiny_config(epochs=30, lr=0.05, schedule="constant", patience=2, monitor="rmse")
    model, history = fit(train, val, config)
    best = history[-1]["best_epoch"]
    assert len(history) < 30 and len(history) - best == 2
    restored = validate(model, train, val, torch.device("cpu"), config)
    assert restored["rmse"] == pytest.approx(history[best - 1]["val_rmse"], rel=1e-5)
    assert restored["rmse"] == min(h["val_rmse"] for h in history)
    assert best_metrics(history)["validation"]["rmse"] == history[best - 1]["val_rmse"]


def test_same_seed_gives_the_same_weights(split) -> None:
    train, val = split
    a, _ = fit(train, val, tiny_config(epochs=2))
    b, _ = fit(train, val, tiny_config(epochs=2))
    c, _ = fit(train, val, tiny_config(epochs=2, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_epoch_log_is_one_json_line_per_epoch(split, tmp_path: Path) -> None:
    train, val = split
    log = tmp_path / "epochs.jsonl"
    seen: list[dict] = []
    fit(train, val, tiny_config(epochs=2, log_file=str(log)), on_epoch=seen.append)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] == [r["epoch"] for r in seen]
    assert {"train_loss", "val_rmse", "val_ndcg@10", "lr", "users_per_s"} <= set(lines[0])


def test_validation_ranking_agrees_with_ml_metrics() -> None:
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.normal(size=(20, 15)).astype(np.float32))
    truth_np = np.where(rng.random((20, 15)) < 0.3, rng.integers(1, 6, (20, 15)), 0)
    truth = torch.from_numpy(truth_np.astype(np.float32))
    ndcg, recall, counted = _ndcg_recall_sums(scores, truth, truth > 0, 10)
    relevant = truth_np >= 4
    expected_ndcg = metrics.ndcg_at_k(scores.numpy(), relevant, 10)
    expected_recall = metrics.recall_at_k(scores.numpy(), relevant, 10)
    assert counted == np.sum(~np.isnan(expected_ndcg))
    assert ndcg / counted == pytest.approx(np.nanmean(expected_ndcg), rel=1e-5)
    assert recall / counted == pytest.approx(np.nanmean(expected_recall), rel=1e-5)


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    config = TrainConfig(warmup_frac=0.1)
    factors = [lr_factor(s, 100, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.01
    assert lr_factor(50, 100, TrainConfig(schedule="constant")) == 1.0


def test_sharding_deals_each_global_batch_across_ranks() -> None:
    order = np.arange(37)
    shards = [shard(order, 8, Dist(rank, 4)) for rank in range(4)]
    assert {len(s) for s, _ in shards} == {10} and {b for _, b in shards} == {2}
    for k in range(4):
        union = sorted(np.concatenate([s[2 * k : 2 * k + 2] for s, _ in shards]).tolist())
        assert union == sorted(order[8 * k : 8 * k + 8].tolist())


def test_presets_and_overrides(tmp_path: Path) -> None:
    seed = preset("seed")
    assert seed.model.hidden == (20, 10) and seed.model.activation == "sigmoid"
    assert seed.model.ranking_loss == "none" and seed.batch_size == 1
    assert (seed.optimizer, seed.lr, seed.weight_decay, seed.epochs) == ("rmsprop", 0.01, 0.5, 200)
    assert not seed.zero_grad
    assert set(PRESETS) >= {"default", "fast", "seed"}
    fast, default = preset("fast"), preset("default")
    assert fast.model.item_codes == 0 and default.model.item_codes > 0  # the one difference
    assert fast.preset == "fast"
    assert dataclasses.replace(fast, preset="default", model=default.model) == default
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = 3\n[model]\nhidden = [4]\nactivation = "relu"\n')
    config = with_overrides(preset("default"), read_config_file(toml))
    assert config.epochs == 3 and config.model.hidden == (4,) and config.model.activation == "relu"
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochz": 3}')
    with pytest.raises(ValueError, match="epochz"):
        with_overrides(preset("default"), read_config_file(bad))
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid"):
        read_config_file(bad)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_seed_preset_trains_the_tutorial_model(split) -> None:
    train, val = split
    config = with_overrides(preset("seed"), {"epochs": 2, "progress": False, "device": "cpu"})
    model, history = fit(train, val, config)
    assert model.config == ModelConfig.tutorial()
    assert len(history) == 2 and math.isfinite(history[-1]["val_rmse"])
    # With gradients cleared every step, the tutorial's L2 of 0.5 flattens the model.
    _, cleared = fit(train, val, with_overrides(config, {"zero_grad": True}))
    assert history[-1]["val_rmse"] < 0.9 * cleared[-1]["val_rmse"]


def test_train_from_store_writes_a_complete_checkpoint(database, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    movies = list(range(1, 21))
    ratings = [
        (u, m, float(rng.integers(1, 11)) / 2)
        for u in range(1, 31)
        for m in rng.choice(movies, size=8, replace=False).tolist()
    ]
    insert_store(database.engine, movies=movies, ratings=ratings)
    result = train_from_store(database.url, tmp_path, tiny_config(epochs=2, val_frac=0.2))
    assert result is not None
    manifest, state = load(result.path)
    assert state and manifest == result.manifest
    assert manifest["movie_ids"] == movies
    assert manifest["data"]["ratings"] == len(ratings) and manifest["data"]["users"] == 30
    assert len(manifest["popularity"]) == 20 and sum(manifest["popularity"]) == len(ratings)
    assert manifest["training"]["epochs"] == 2
    val = manifest["metrics"]["validation"]
    assert {"rmse", "mae", "ndcg@10"} <= set(val) and val["rmse"] > 0
    assert result.metrics == manifest["metrics"]
    assert (result.path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len((result.path / "history.jsonl").read_text().splitlines()) == 2


def test_a_rebuilt_model_scores_as_the_active_one_on_the_same_slice(
    database, tmp_path: Path
) -> None:
    """The gate's figures: the same training twice gives the same model, and scored on one
    slice the two get the same figures (the issue's refusal compared two different slices)."""
    rng = np.random.default_rng(1)
    movies = list(range(1, 21))
    ratings = [
        (u, m, float(rng.integers(1, 11)) / 2)
        for u in range(1, 31)
        for m in rng.choice(movies, size=8, replace=False).tolist()
    ]
    insert_store(database.engine, movies=movies, ratings=ratings)
    config = tiny_config(epochs=2, val_frac=0.2)
    first = train_from_store(database.url, tmp_path / "a", config)
    assert first is not None and "gate" not in first.metrics
    second = train_from_store(database.url, tmp_path / "b", config, active=first.path)
    assert second is not None
    gate = second.metrics["gate"]
    assert gate["active"]["sha256"] == first.sha256
    assert gate["held_out_ratings"] == gate["new"]["n_ratings"] > 0
    assert gate["new"] == {k: v for k, v in gate["active"].items() if k not in ("path", "sha256")}
    missing = train_from_store(database.url, tmp_path / "c", config, active=tmp_path / "gone")
    assert missing is not None and "gone" in missing.metrics["gate"]["active"]["error"]


def test_the_gate_scores_both_models_on_the_ratings_of_movies_both_know(tmp_path: Path) -> None:
    """A movie added since the active model was trained: its held-out ratings are left out of
    both figures (the active model can neither rank nor rate it), every other one counts."""
    from ml.data import RatingsData, build_matrix, validation_split

    rng = np.random.default_rng(2)
    rows = [
        (u, m, float(rng.integers(1, 11)) / 2)
        for u in range(1, 31)
        for m in rng.choice(np.arange(1, 21), size=8, replace=False).tolist()
    ]

    def data(triples: list, movies: list[int]) -> RatingsData:
        arr = np.array(triples, dtype=np.float64)
        catalogue = np.array(movies, dtype=np.int64)
        matrix, users = build_matrix(
            arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], catalogue
        )
        return RatingsData(matrix, users, catalogue, None)

    config = tiny_config(epochs=2, val_frac=0.2)
    first = train_from_store("", tmp_path / "a", config, data=data(rows, list(range(1, 21))))
    assert first is not None
    grown = data(rows + [(u, 21, 4.0) for u in range(1, 31)], list(range(1, 22)))
    second = train_from_store("", tmp_path / "b", config, data=grown, active=first.path)
    assert second is not None
    _, val = validation_split(grown.matrix, config.val_frac, config.seed)
    new_movie = int(val[:, 20].nnz)
    assert new_movie > 0  # the slice holds ratings of the new movie
    gate = second.metrics["gate"]
    assert gate["held_out_ratings"] == val.nnz - new_movie
    assert gate["new"]["n_ratings"] == gate["active"]["n_ratings"] == val.nnz - new_movie
    assert np.isfinite(gate["active"]["rmse"]) and np.isfinite(gate["new"]["rmse"])


def test_finish_uses_the_validation_slice_then_refits_ease_on_every_rating(split) -> None:
    from ml.model import ease_weights

    train, val = split
    full = (train + val).tocsr()
    config = tiny_config(epochs=2)
    model, _ = fit(train, val, config)
    assert model.wide is not None
    facts = finish(model, train, val, full, config)
    assert {"rmse_before", "rmse_after"} <= set(facts["calibration"])
    assert facts["calibration"]["rmse_after"] <= facts["calibration"]["rmse_before"] + 1e-9
    assert facts["wide_mix"] == model.config.wide_mix
    # The reported figures are the finished model's on the slice, taken before the EASE refit
    # (which sees the slice): the rating paths are unchanged by the refit, the ranking is not.
    after = validate(model, train, val, torch.device("cpu"), config)
    assert facts["validation"]["rmse"] == pytest.approx(after["rmse"], rel=1e-5)
    assert facts["validation"]["rmse"] == pytest.approx(
        facts["calibration"]["rmse_after"], rel=1e-4
    )
    assert facts["validation"]["ndcg@10"] < after["ndcg@10"]
    # The EASE path ends solved on every rating, with the λ chosen there.
    expected = ease_weights(full.astype(np.float32), model.config.wide_lambda)
    assert np.allclose(model.wide.numpy(), expected, atol=1e-4)
    assert facts["wide_lambda"] == model.config.wide_lambda
    assert finish(model, train, val[:0], full, config) == {}


def _tiny_store(database) -> None:
    rng = np.random.default_rng(1)
    ratings = [
        (u, m, float(rng.integers(1, 11)) / 2)
        for u in range(1, 33)
        for m in rng.choice(np.arange(1, 21), size=8, replace=False).tolist()
    ]
    insert_store(database.engine, movies=list(range(1, 21)), ratings=ratings)


def _tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text('device = "cpu"\nbatch_size = 8\nthreads = 1\n[model]\nhidden = [8]\n')
    return path


def test_module_entry_point_writes_a_checkpoint(database, tmp_path: Path, capsys) -> None:
    from ml.fit.pipeline import main

    _tiny_store(database)
    out = tmp_path / "models"
    args = ["--out", str(out), "--epochs", "1", "--config", str(_tiny_toml(tmp_path))]
    assert main(["--database-url", database.url, *args, "--no-progress"]) == 0
    (written,) = out.iterdir()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(written) and "rmse" in summary["validation"]
    assert main(["--database-url", database.url, "--preset", "seed", "--epochs", "0"]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_write_one_checkpoint(database, tmp_path: Path) -> None:
    import subprocess
    import sys

    _tiny_store(database)
    out = tmp_path / "models"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["-m", "ml.train", "--database-url", database.url, "--out", str(out)]
    cmd += ["--epochs", "2", "--no-progress", "--config", str(_tiny_toml(tmp_path))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = out.iterdir()  # only rank 0 writes
    assert load(written)[0]["training"]["epochs"] == 2
    assert done.stdout.count('"epoch": 1,') == 1  # one log line per epoch, from rank 0
