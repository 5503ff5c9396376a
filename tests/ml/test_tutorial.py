"""ml.tutorial: the hand-written loop of the seed preset against ml.fit.loop's autograd loop."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ml import tutorial
from ml.data import validation_split
from ml.fit.config import TrainConfig, preset, with_overrides
from ml.fit.loop import Dist, _Objective, _train_epoch, make_optimizer, validate
from ml.fit.pipeline import fit
from ml.model import Autoencoder
from tests.ml.test_data import random_matrix

CPU = torch.device("cpu")
TOLERANCE = 1e-10  # float64: the two loops differ only in the order of their sums


@pytest.fixture(scope="module")
def split() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    train, val = validation_split(random_matrix(40, 30, density=0.4, seed=3), 0.2, seed=0)
    return sp.csr_matrix(train, dtype=np.float32), val


def seed_config(**changes: Any) -> TrainConfig:
    return with_overrides(preset("seed"), {"progress": False, **changes})


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(float((x - y).abs().max()) for x, y in pairs)


def run_both(
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    reference: TrainConfig,
    fast: TrainConfig,
    epochs: int,
) -> list[dict[str, float]]:
    """Train one float64 model with ml.fit.loop's autograd loop under ``reference`` and a copy
    with the hand-written loop under ``fast``, epoch by epoch; per epoch the largest parameter
    difference and both loops' loss parts and validation metrics."""
    torch.manual_seed(reference.seed)
    ref = Autoencoder.from_data(train, reference.model).double()
    mine = copy.deepcopy(ref)
    objective, optimizer = _Objective(ref), make_optimizer(ref, reference)
    trainer = tutorial.TutorialTrainer(mine, fast)
    total = epochs * train.shape[0]
    step_ref = step_fast = 0
    out = []
    for epoch in range(1, epochs + 1):
        parts_ref, step_ref = _train_epoch(
            objective, optimizer, train, epoch, step_ref, total, CPU, reference, Dist()
        )
        parts_fast, step_fast = trainer.epoch(train, epoch, step_fast, total)
        assert step_fast == step_ref
        out.append(
            {
                "params": max_difference(ref, mine),
                "loss": abs(parts_ref["train_loss"] - parts_fast["train_loss"]),
                "parts": float(set(parts_ref) == set(parts_fast)),
                "val_rmse": abs(
                    validate(ref, train, val, CPU, reference)["rmse"]
                    - validate(mine, train, val, CPU, fast)["rmse"]
                ),
            }
        )
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the preset: accumulated gradients, constant learning rate, 20-10-20
        {"zero_grad": True, "schedule": "cosine", "weight_decay": 0.01},
        {"lr": 0.003, "model": {"hidden": [8, 5, 3]}},
        {"weight_decay": 0.0, "model": {"hidden": [6], "rating_weight": 2.0}},
    ],
)
def test_hand_written_loop_equals_autograd_loop(split, changes) -> None:
    train, val = split
    config = seed_config(**changes)
    for epoch in run_both(train, val, config, config, epochs=4):
        assert epoch["parts"] == 1.0
        assert epoch["params"] < TOLERANCE
        assert epoch["loss"] < TOLERANCE
        assert epoch["val_rmse"] < TOLERANCE


@pytest.mark.parametrize(
    "changes",
    [{"weight_decay": 0.5 * (1 + 1e-6)}, {"lr": 0.01 * (1 + 1e-6)}, {"zero_grad": True}],
)
def test_the_comparison_sees_a_small_change_of_the_maths(split, changes) -> None:
    train, val = split
    config = seed_config()
    last = run_both(train, val, config, dataclasses.replace(config, **changes), epochs=2)[-1]
    assert last["params"] > 1e3 * TOLERANCE


def test_fit_hands_the_seed_preset_to_the_hand_written_loop(split, monkeypatch, tmp_path) -> None:
    """End to end in float32: ml.fit.pipeline.fit through ml.tutorial against the autograd loop,
    same history (keys, epochs, restored epoch, figures up to float32 rounding) and weights."""
    train, val = split
    calls = []
    real_fit = tutorial.fit

    def counting_fit(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tutorial, "fit", counting_fit)
    runs = {}
    for enabled in (True, False):
        monkeypatch.setattr(tutorial, "ENABLED", enabled)
        log = tmp_path / f"{enabled}.jsonl"
        records: list[dict[str, Any]] = []
        config = seed_config(epochs=5, log_file=str(log))
        model, history = fit(train, val, config, on_epoch=records.append)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        runs[enabled] = model, history, records, lines
    assert len(calls) == 1  # only the enabled run went through ml.tutorial
    fast, fast_history, fast_records, fast_lines = runs[True]
    ref, ref_history, _, ref_lines = runs[False]
    assert fast_records == fast_history
    assert len(fast_lines) == len(ref_lines) == len(fast_history) == len(ref_history) == 5
    for mine, theirs in zip(fast_history, ref_history, strict=True):
        assert set(mine) == set(theirs)
        assert mine["epoch"] == theirs["epoch"] and mine["lr"] == theirs["lr"]
        assert mine["best_epoch"] == theirs["best_epoch"]
        for key in ("train_loss", "train_rating_mse", "val_rmse", "val_mae"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4), key
    assert [set(line) for line in fast_lines] == [set(line) for line in ref_lines]
    assert max_difference(fast, ref) < 1e-4
    assert not fast.training
    # The parameters own their memory again (safetensors refuses shared storage).
    pointers = {p.untyped_storage().data_ptr() for p in fast.parameters()}
    assert len(pointers) == len(list(fast.parameters()))
    assert all(p.is_contiguous() for p in fast.parameters())


def test_only_the_tutorial_kind_of_training_is_handed_over(split) -> None:
    train, _ = split
    seed = seed_config()
    assert tutorial.supports(seed, Dist(), CPU, train)
    assert not tutorial.supports(preset("default"), Dist(), CPU, train)
    assert not tutorial.supports(dataclasses.replace(seed, batch_size=2), Dist(), CPU, train)
    assert not tutorial.supports(dataclasses.replace(seed, optimizer="adamw"), Dist(), CPU)
    assert not tutorial.supports(dataclasses.replace(seed, grad_clip=1.0), Dist(), CPU)
    assert not tutorial.supports(seed, Dist(0, 2), CPU)
    assert not tutorial.supports(seed, Dist(), torch.device("cuda"))
    relu = with_overrides(seed, {"model": {"activation": "relu"}})
    assert not tutorial.supports(relu, Dist(), CPU)
    # A movie stored twice in a user's row: densify keeps one value, the loop would read both.
    last = train.indptr[-2]
    assert train.indptr[-1] > last
    indptr = train.indptr.copy()
    indptr[-1] += 1
    doubled = sp.csr_matrix(
        (np.append(train.data, 1.0), np.append(train.indices, train.indices[last]), indptr),
        shape=train.shape,
    )
    assert not tutorial.supports(seed, Dist(), CPU, doubled)
