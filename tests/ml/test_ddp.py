"""DDP on CPU (gloo): two processes train like one process on the same data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import scipy.sparse as sp
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.ports import free_port
from ml.data import split_per_user
from ml.fit.config import TrainConfig, with_overrides
from ml.fit.pipeline import fit
from tests.ml.test_checkpoint import TINY
from tests.ml.test_data import random_matrix

# Deterministic objective (no dropout), so that the only difference between one process and two
# is how the batch is cut in halves; 64 users in batches of 16 → no padding on 2 ranks.
CONFIG = TrainConfig(
    epochs=3,
    batch_size=16,
    lr=5e-3,
    device="cpu",
    progress=False,
    threads=1,
    model=with_overrides(
        TrainConfig(model=TINY), {"model": {"input_dropout": 0.0, "dropout": 0.0, "wide": False}}
    ).model,
)


def _data() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    return split_per_user(random_matrix(64, 30, density=0.4, seed=11), 0.2, seed=0)


# The same without the residual-ridge path: the model trains on packed rows (loss_sparse).
PACKED = with_overrides(CONFIG, {"model": {"wide_rating": False}})


def _worker(rank: int, world: int, port: int, out: str, config: TrainConfig) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        train, val = _data()
        _, history = fit(train, val, config)
        if rank == 0:
            Path(out).write_text(json.dumps(history))
        # Both ranks leave together: a rank that tears the group down while the other is
        # still working can abort inside gloo ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: with two gloo ranks on a loaded machine, a
    # native thread destroyed at exit occasionally aborts the process ("terminate called
    # without an active exception") after the work and the group's teardown have succeeded.
    os._exit(0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("config", [CONFIG, PACKED], ids=["dense", "packed"])
def test_two_gloo_processes_match_one_process(tmp_path: Path, config: TrainConfig) -> None:
    out = tmp_path / "ddp.json"
    mp.spawn(_worker, args=(2, free_port(), str(out), config), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    train, val = _data()
    model, single = fit(train, val, config)
    assert model.sparse_training() == (config is PACKED)
    assert len(ddp) == len(single) == config.epochs
    for a, b in zip(ddp, single, strict=True):
        assert a["val_n_ratings"] == b["val_n_ratings"]  # validation sums all-reduced
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], rel=1e-3)
        assert a["val_ndcg@10"] == pytest.approx(b["val_ndcg@10"], abs=1e-3)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=5e-3)
    # Training moved the model: the comparison is not between two untrained models.
    assert single[-1]["val_rmse"] < single[0]["val_rmse"]
