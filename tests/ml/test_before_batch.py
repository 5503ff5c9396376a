"""``ml.fit.loop.before_batch``: called before every mini-batch of both training loops, and what
it raises stops training at that batch (the worker's cancellation and shutdown)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ml import tutorial
from ml.data import validation_split
from ml.fit.config import TrainConfig
from ml.fit.loop import Dist, _n_batches, before_batch
from ml.fit.pipeline import fit
from tests.ml.test_data import random_matrix
from tests.ml.test_train import tiny_config
from tests.ml.test_tutorial import seed_config


class Stop(Exception):
    pass


def batches_run(train: Any, config: TrainConfig, stop_at: int | None) -> int:
    """Train with a hook that raises before batch ``stop_at`` (None: never); the batches begun."""
    calls = 0

    def check() -> None:
        nonlocal calls
        if stop_at is not None and calls + 1 == stop_at:
            raise Stop
        calls += 1

    token = before_batch.set(check)
    try:
        fit(train, None, config)
    except Stop:
        pass
    finally:
        before_batch.reset(token)
    return calls


@pytest.fixture(scope="module")
def split() -> Any:
    return validation_split(random_matrix(40, 30, density=0.4, seed=3), 0.2, seed=0)


@pytest.mark.parametrize("loop", ["autograd", "hand-written"])
def test_the_hook_runs_before_every_batch_and_stops_training_there(split, loop) -> None:
    train, _ = split
    config = tiny_config(epochs=2) if loop == "autograd" else seed_config(epochs=2)
    assert tutorial.supports(config, Dist(), torch.device("cpu"), train) == (loop == "hand-written")
    per_epoch = _n_batches(train, config, Dist())
    assert per_epoch > 3
    assert batches_run(train, config, None) == 2 * per_epoch
    # Raised before the third batch of the first epoch: two batches ran, no more.
    assert batches_run(train, config, 3) == 2
