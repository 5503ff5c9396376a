"""The packed-row objective (``Autoencoder.loss_sparse``) against the dense one: the same loss,
gradients and optimiser step up to float rounding, the same random draws; the trainer takes the
packed path exactly where the model allows it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ml.data import densify, pack_rows, split_per_user
from ml.fit.config import TrainConfig
from ml.fit.loop import make_optimizer, validate
from ml.fit.pipeline import fit
from ml.model import Autoencoder, ModelConfig
from tests.ml.test_model import random_ratings

# Models without the paths that read whole rows (wide, residual ridge): every knob the packed
# objective has to reproduce — baseline or not, normalised or not, one input or both, deep
# stacks, code dropout, the ranking loss or no ranking head, zero loss weights.
SPARSE_CONFIGS = {
    "large-catalogue default": ModelConfig(wide=False, wide_rating=False, item_codes=0),
    "deep": ModelConfig(
        hidden=(16, 8), activation="selu", dropout=0.2, wide=False, wide_rating=False
    ),
    "unnormalised": ModelConfig(
        hidden=(12,),
        normalise=False,
        binary_input=False,
        wide=False,
        wide_rating=False,
    ),
    "no-baseline-no-ranking-weight": ModelConfig(
        hidden=(12, 6),
        baseline=False,
        rating_input=False,
        ranking_weight=0.0,
        wide=False,
        item_codes=0,
    ),
    "tutorial": ModelConfig.tutorial(),
}


def _step(model: Autoencoder, batch: tuple[torch.Tensor, ...], sparse: bool, seed: int):
    """Loss parts, gradients and the parameters after one AdamW step (fixed random state)."""
    config = TrainConfig(lr=1e-2)
    optimizer = make_optimizer(model, config)
    model.train()
    torch.manual_seed(seed)
    loss, parts = model.loss_sparse(*batch) if sparse else model.loss(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return parts, grads, params


@pytest.mark.parametrize("name", SPARSE_CONFIGS)
def test_sparse_step_equals_dense_step(name: str) -> None:
    train = random_ratings(n_users=40, n_items=30, density=0.3)
    torch.manual_seed(1)
    reference = Autoencoder.from_data(train, SPARSE_CONFIGS[name])
    assert reference.sparse_training()
    rows = np.array([3, 17, 0, 25, 9, 38, 12, 31])
    dense_model, sparse_model = (Autoencoder.from_data(train, reference.config) for _ in "ab")
    dense_model.load_state_dict(reference.state_dict())
    sparse_model.load_state_dict(reference.state_dict())
    parts_d, grads_d, params_d = _step(dense_model, densify(train, rows), False, seed=7)
    parts_s, grads_s, params_s = _step(sparse_model, pack_rows(train, rows), True, seed=7)
    assert parts_d.keys() == parts_s.keys()
    for key, value in parts_d.items():
        assert parts_s[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert grads_d.keys() == grads_s.keys()
    for key, grad in grads_d.items():
        torch.testing.assert_close(grads_s[key], grad, rtol=1e-4, atol=1e-6, msg=key)
    # AdamW's first step is about lr · g / (|g| + 1e-8): on a gradient of 1e-8 (tutorial model)
    # rounding moves the update by up to a few 1e-6 at lr 1e-2, hence the absolute tolerance.
    for key, param in params_d.items():
        torch.testing.assert_close(params_s[key], param, rtol=1e-5, atol=1e-5, msg=key)


def test_input_dropout_hides_the_same_ratings_in_both_forms() -> None:
    """With a different random state the step differs: the draws matter, and are shared."""
    train = random_ratings(n_users=40, n_items=30, density=0.3)
    config = SPARSE_CONFIGS["large-catalogue default"]
    rows = np.arange(8)
    torch.manual_seed(1)
    model = Autoencoder.from_data(train, config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for seed in (7, 7, 8):
        model.load_state_dict(state)
        losses.append(_step(model, pack_rows(train, rows), True, seed)[0]["loss"])
    dense_model = Autoencoder.from_data(train, config)
    dense_model.load_state_dict(state)
    dense_loss = _step(dense_model, densify(train, rows), False, seed=7)[0]["loss"]
    assert losses[0] == losses[1] == pytest.approx(dense_loss, rel=1e-5)
    assert losses[2] != pytest.approx(losses[0], rel=1e-4)


def test_models_with_row_reading_paths_refuse_the_packed_objective() -> None:
    train = random_ratings()
    model = Autoencoder.from_data(train, ModelConfig())  # EASE and residual-ridge paths on
    assert not model.sparse_training()
    with pytest.raises(ValueError, match="dense rows"):
        model.loss_sparse(*pack_rows(train, np.arange(4)))


def test_pack_rows_matches_the_csr_rows() -> None:
    train = sp.csr_matrix(random_ratings(n_users=12, n_items=9, density=0.4))
    rows = np.array([5, 0, 11, 5])
    indices, values, offsets = pack_rows(train, rows)
    for b, row in enumerate(rows):
        start = int(offsets[b])
        end = int(offsets[b + 1]) if b + 1 < len(rows) else indices.numel()
        ref = train[row]
        assert indices[start:end].tolist() == ref.indices.tolist()
        assert values[start:end].tolist() == ref.data.tolist()


def test_fit_with_the_packed_objective_matches_the_dense_one(monkeypatch) -> None:
    """Two epochs of ``fit`` on a model without wide paths: packed batches (the trainer's
    choice) against dense ones forced through the same objective wrapper."""
    train = random_ratings(n_users=48, n_items=30, density=0.3)
    model_config = ModelConfig(hidden=(12,), wide=False, wide_rating=False, item_codes=0)
    config = TrainConfig(
        epochs=2, batch_size=8, device="cpu", progress=False, threads=1, model=model_config
    )
    packed, history_packed = fit(train, None, config)
    monkeypatch.setattr(Autoencoder, "sparse_training", lambda self: False)
    dense, history_dense = fit(train, None, config)
    for a, b in zip(history_packed, history_dense, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    for (name, p), q in zip(packed.state_dict().items(), dense.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_validation_from_packed_rows_matches_the_dense_pass(monkeypatch) -> None:
    train = random_ratings(n_users=48, n_items=30, density=0.3)
    fit_part, val_part = split_per_user(train, 0.3, seed=0)
    config = TrainConfig(eval_batch_size=7, device="cpu", progress=False)
    for model_config in SPARSE_CONFIGS.values():
        torch.manual_seed(0)
        model = Autoencoder.from_data(fit_part, model_config)
        packed = validate(model, fit_part, val_part, torch.device("cpu"), config)
        with monkeypatch.context() as patch:
            patch.setattr(Autoencoder, "sparse_training", lambda self: False)
            dense = validate(model, fit_part, val_part, torch.device("cpu"), config)
        assert packed.keys() == dense.keys()
        for key, value in dense.items():
            assert packed[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
