"""The item-code rating path: fold-in, top-k-only ratings, round trips, the fitted blend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ml.checkpoint import save
from ml.data import split_ratings
from ml.inference import Recommender
from ml.model import Autoencoder, ModelConfig, fold_in_codes, train_item_codes
from tests.ml.test_data import random_matrix

SMALL = ModelConfig(hidden=(8,), item_codes=6, item_code_lambda=2.0, item_code_epochs=5)


def with_codes(m: sp.csr_matrix, config: ModelConfig = SMALL, gain: float = 0.8) -> Autoencoder:
    """A model whose every rating path contributes (the code path's weight set as calibrated)."""
    torch.manual_seed(0)
    model = Autoencoder.from_data(m, config).eval()
    assert model.item_code is not None and model.item_code_gain is not None
    with torch.no_grad():
        for p in model.parameters():  # non-trivial weights everywhere, heads included
            if p is not model.item_code:
                p.add_(0.05 * torch.randn_like(p))
        model.item_code_gain.fill_(gain)
    return model


def packed(m: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(m.indices.astype(np.int64)),
        torch.from_numpy(m.data),
        torch.from_numpy(m.indptr[:-1].astype(np.int64)),
    )


def test_fold_in_equals_the_direct_ridge_solution_in_both_forms() -> None:
    rng = np.random.default_rng(0)
    n_items, d, lam = 30, 5, 0.7
    codes = rng.random((n_items, d)).astype(np.float32)
    # Users with 0, 1, fewer than d (dual form) and at least d (primal form) ratings.
    rated = [[], [3], [0, 7, 9], [1, 2, 4, 8, 11, 12, 20], list(range(0, 30, 2)), [5, 6]]
    resid = [rng.normal(size=len(r)) for r in rated]
    got = fold_in_codes(
        torch.from_numpy(codes),
        torch.from_numpy(np.concatenate(rated).astype(np.int64)),
        torch.from_numpy(np.concatenate(resid).astype(np.float32)),
        [len(r) for r in rated],
        lam,
    ).numpy()
    for u, (cols, y) in enumerate(zip(rated, resid, strict=True)):
        h = codes[cols].astype(np.float64)  # (n_u, d)
        want = np.linalg.solve(h.T @ h + lam * np.eye(d), h.T @ y) if cols else np.zeros(d)
        np.testing.assert_allclose(got[u], want, rtol=1e-4, atol=1e-5)


def test_item_autoencoder_codes_are_deterministic_sigmoid_codes() -> None:
    m = random_matrix(40, 30)
    torch.manual_seed(3)
    a = train_item_codes(m, SMALL)
    torch.manual_seed(3)
    b = train_item_codes(m, SMALL)
    assert a.shape == (30, 6) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert (a > 0).all() and (a < 1).all()


def test_code_path_is_off_until_weighted_and_in_training() -> None:
    m = random_matrix(40, 30)
    model = with_codes(m, gain=0.0)
    ratings = torch.from_numpy(m.toarray())
    with torch.no_grad():
        off, _ = model(ratings, ratings > 0)
        assert model.item_code_gain is not None
        model.item_code_gain.fill_(1.0)
        on, _ = model(ratings, ratings > 0)
    assert not torch.allclose(off, on)
    assert not model.train()._codes_active()  # the training objective never folds in


def test_dense_sparse_and_top_k_only_ratings_agree() -> None:
    m = random_matrix(40, 30)
    model = with_codes(m)
    ratings = torch.from_numpy(m.toarray())
    with torch.no_grad():
        dense_pred, dense_scores = model(ratings, ratings > 0)
        pred, scores = model.forward_sparse(*packed(m))
        users = model.encode_sparse(*packed(m))
        ranked = model.rank_sparse(users)
        cols = torch.topk(ranked, 7, dim=1).indices  # (B, 7), rated movies among them
        some = model.rate_columns(users, cols)
    torch.testing.assert_close(pred, dense_pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, dense_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ranked, scores)
    torch.testing.assert_close(some, pred.gather(1, cols), rtol=1e-5, atol=1e-5)


def test_recommender_top_k_rows_rates_only_returned_columns_as_the_full_pass(
    tmp_path: Path,
) -> None:
    m = random_matrix(40, 30)
    model = with_codes(m)
    path, _ = save(tmp_path, model, {"movie_ids": list(range(100, 130))})
    rec = Recommender.from_checkpoint(path)
    users = [{100: 5.0, 103: 2.5, 120: 4.0}, {101: 1.0}, {}]
    rows = [rec._encode(u) for u in users]
    everything = np.ones(30, dtype=bool)
    got = rec.top_k_rows(rows, [5, 30, 3], [everything] * 3)
    for user, (ids, scores, preds) in zip(users, got, strict=True):
        full_pred, full_scores = rec.score(user)
        cols = rec.columns(ids)
        np.testing.assert_allclose(preds, full_pred[cols], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scores, full_scores[cols], rtol=1e-6)
    assert len(got[1][0]) == 29


def test_checkpoint_round_trip_keeps_the_path_and_old_checkpoints_still_load(
    tmp_path: Path,
) -> None:
    m = random_matrix(40, 30)
    model = with_codes(m)
    path, _ = save(tmp_path, model, {"movie_ids": list(range(100, 130))})
    rec = Recommender.from_checkpoint(path)
    user = {100: 5.0, 103: 2.5, 120: 4.0}
    pred, scores = rec.score(user)
    with torch.no_grad():
        direct, direct_scores = model.forward_sparse(
            torch.tensor([0, 3, 20]), torch.tensor([5.0, 2.5, 4.0]), torch.tensor([0])
        )
    assert np.array_equal(pred, direct[0].numpy()) and np.array_equal(scores, direct_scores[0])
    # A visitor is folded in, and a changed rating changes the answer.
    changed = rec.predict({**user, 103: 5.0}, [110])[110]
    assert changed is not None and changed != pytest.approx(rec.predict(user, [110])[110])
    # An architecture written before the path existed has no item_codes key: no path.
    old = json.loads(json.dumps(model.architecture()))
    del old["config"]["item_codes"]
    legacy = Autoencoder.from_architecture(old)
    assert legacy.item_code is None and legacy.config.item_codes == 0
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("item_code")}
    legacy.load_state_dict(state)


def planted(n_users: int = 120, n_items: int = 60, seed: int = 0) -> sp.csr_matrix:
    """Ratings with a planted rank-3 taste structure on top of biases, half of them observed."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    full = 3.5 + 0.8 * users @ items.T / np.sqrt(3) + 0.3 * rng.normal(size=(n_users, n_items))
    full += rng.normal(scale=0.3, size=(n_users, 1)) + rng.normal(scale=0.3, size=(1, n_items))
    dense = np.clip(np.round(full * 2) / 2, 1.0, 5.0).astype(np.float32)
    dense[rng.random(dense.shape) > 0.5] = 0.0
    return sp.csr_matrix(dense)


def test_blend_fitted_on_held_out_ratings_lowers_held_out_rmse() -> None:
    full = planted()
    train, held = split_ratings(full, 0.3, 0)
    calib, test = split_ratings(held, 0.5, 1)  # fit the blend on one half, judge on the other
    ratings = torch.from_numpy(train.toarray())
    coo = test.tocoo()

    def rmse(model: Autoencoder) -> float:
        with torch.no_grad():
            pred, _ = model(ratings, ratings > 0)
        return float(np.sqrt(np.mean((pred.numpy()[coo.row, coo.col] - coo.data) ** 2)))

    config = ModelConfig(
        hidden=(8,),
        wide_rating=False,
        item_codes=8,
        item_code_lambda=3.0,
        item_code_l2=1.0,
        item_code_lr=1e-2,
        item_code_batch=8,
        item_code_epochs=100,
    )
    torch.manual_seed(0)
    model = Autoencoder.from_data(train, config).eval()
    before = rmse(model)  # no code path yet (weight 0)
    facts = model.calibrate_rating_paths(train, calib)
    after = rmse(model)
    torch.manual_seed(0)
    without = Autoencoder.from_data(
        train, ModelConfig(hidden=(8,), wide_rating=False, item_codes=0)
    )
    without.eval().calibrate_rating_paths(train, calib)
    assert facts["codes_weight"] > 0.3  # the planted structure is what the codes carry
    assert after < before - 0.05
    assert after < rmse(without) - 0.05  # the same blend without the codes does not get there
