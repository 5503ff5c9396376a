"""The item-code rating path: fold-in, top-k-only ratings, round trips, the fitted blend."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ml.checkpoint import save
from ml.data import split_ratings
from ml.inference import Recommender
from ml.model import (
    Autoencoder,
    ModelConfig,
    fold_in_codes,
    fold_in_duals,
    train_item_codes,
)
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


@pytest.mark.parametrize("grouped", [None, True])
@pytest.mark.parametrize("with_gram", [False, True])
def test_fold_in_of_one_user_alone_equals_the_batched_solve(
    with_gram: bool, grouped: bool | None
) -> None:
    rng = np.random.default_rng(1)
    n_items, d, lam = 40, 8, 0.7
    codes = torch.from_numpy(rng.random((n_items, d)).astype(np.float32))
    gram = (codes @ codes.T).contiguous() if with_gram else None
    # 0 and 1 ratings and a few (one padded dual group); 2d − 1 (with the gram: dual, a group
    # of its own; without: primal); 2d and more (a padded primal group), 40 (a group of its own)
    rated = [
        [],
        [3],
        [0, 7, 9],
        [5, 6],
        [11, 12, 13],
        list(range(1, 2 * d)),
        list(range(0, 2 * d)),
        list(range(0, 40, 2)),
        list(range(40)),
    ]
    resid = [rng.normal(size=len(r)).astype(np.float32) for r in rated]
    indices = torch.from_numpy(np.concatenate(rated).astype(np.int64))
    values = torch.from_numpy(np.concatenate(resid))
    lengths = [len(r) for r in rated]
    # grouped=None on the CPU: every user solved alone; True: the accelerator's padded groups
    alpha = fold_in_duals(codes, indices, values, lengths, lam, gram, grouped)
    vectors = fold_in_codes(codes, indices, values, lengths, lam, gram)
    start = 0
    for u, (cols, y) in enumerate(zip(rated, resid, strict=True)):
        part = slice(start, start + len(cols))
        start += len(cols)
        idx = torch.tensor(cols, dtype=torch.int64)
        alone = fold_in_duals(codes, idx, torch.from_numpy(y), [len(cols)], lam, gram)
        torch.testing.assert_close(alone, alpha[part], rtol=1e-4, atol=1e-5)
        w = fold_in_codes(codes, idx, torch.from_numpy(y), [len(cols)], lam, gram)[0]
        torch.testing.assert_close(w, vectors[u], rtol=1e-4, atol=1e-5)
        h = codes.numpy()[cols].astype(np.float64)  # (n_u, d)
        want = np.linalg.solve(h.T @ h + lam * np.eye(d), h.T @ y) if cols else np.zeros(d)
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-4, atol=1e-5)
        # The dual coefficients give the vector: w = H_Rᵀ α (the primal ones included).
        np.testing.assert_allclose(h.T @ alone.double().numpy(), want, rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_one_user_alone_and_in_a_batch_rated_as_the_dense_pass(zero_diagonal: bool) -> None:
    """``rate_columns`` of a user encoded alone (the one-user paths of the encoding and of the
    fold-in) and in a batch equals the dense forward pass, with the wide paths' diagonals
    exactly zero (skipped) or not (subtracted); alone and in a batch agree more closely."""
    m = random_matrix(40, 30)
    model = with_codes(m)  # its wide paths' diagonals are perturbed away from 0
    assert model.wide is not None and model.wide_rating is not None
    if zero_diagonal:
        with torch.no_grad():
            model.wide.fill_diagonal_(0.0)
            model.wide_rating.fill_diagonal_(0.0)
    assert model._zero_diagonal(model.wide_rating) is zero_diagonal
    assert model._zero_diagonal(model.wide) is zero_diagonal
    heavy = np.zeros((1, 30), dtype=np.float32)
    heavy[0, ::2] = np.arange(15) % 5 + 1.0  # over 2d ratings: the primal form
    empty = np.zeros((1, 30), dtype=np.float32)
    rows = sp.csr_matrix(np.vstack([m[:5].toarray(), heavy, empty]))
    assert model.item_code is not None and 2 * model.item_code.shape[1] <= 15
    ratings = torch.from_numpy(rows.toarray())
    every = torch.arange(30).expand(rows.shape[0], -1)  # every column, rated ones included
    with torch.no_grad():
        dense_pred, dense_scores = model(ratings, ratings > 0)
        batch = model.rate_columns(model.encode_sparse(*packed(rows)), every)
        torch.testing.assert_close(batch, dense_pred, rtol=1e-5, atol=1e-5)
        for b in range(rows.shape[0]):
            one = rows[b]
            users = model.encode_sparse(*packed(one))
            alone = model.rate_columns(users, every[b : b + 1])
            torch.testing.assert_close(alone[0], dense_pred[b], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(alone[0], batch[b], rtol=1e-6, atol=1e-6)
            some = torch.tensor([[b, 29, 3, b]])  # a column twice as well
            picked = model.rate_columns(users, some)[0]
            torch.testing.assert_close(picked, dense_pred[b, some[0]], rtol=1e-5, atol=1e-5)
            pred, scores = model.forward_sparse(*packed(one))
            torch.testing.assert_close(pred[0], dense_pred[b], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(scores[0], dense_scores[b], rtol=1e-5, atol=1e-5)


def test_cached_derived_weights_follow_in_place_changes() -> None:
    """The per-movie constants, the zero-diagonal flags and H Hᵀ are cached from the weights;
    changing a weight in place (as calibration and refits do) is seen by the next request."""
    m = random_matrix(40, 30)
    model = with_codes(m)
    one = m[:1]
    ratings = torch.from_numpy(one.toarray())
    every = torch.arange(30).unsqueeze(0)
    with torch.no_grad():
        model.rate_columns(model.encode_sparse(*packed(one)), every)  # fills the caches
        assert model.wide_rating is not None and model.item_code is not None
        model.rating_head.bias.add_(0.3)
        model.item_bias.mul_(0.5)
        model.wide_rating.fill_diagonal_(0.0)
        model.item_code.mul_(0.9)
        rated = model.rate_columns(model.encode_sparse(*packed(one)), every)
        dense, _ = model(ratings, ratings > 0)
    assert model._zero_diagonal(model.wide_rating)
    torch.testing.assert_close(model._item_code_gram(), model.item_code @ model.item_code.T)
    torch.testing.assert_close(rated, dense, rtol=1e-5, atol=1e-5)


def test_ease_alone_skips_the_deep_head_with_the_same_scores() -> None:
    """With ``wide_mix`` 0 the served scores are the EASE scores, exactly what adding 0 times
    the deep head's log-probabilities gives; a non-zero mix still reads the deep head."""
    m = random_matrix(40, 30)
    model = with_codes(m, dataclasses.replace(SMALL, wide_mix=0.0))
    assert model.ranking_head is not None
    ratings = torch.from_numpy(m.toarray())
    with torch.no_grad():
        users = model.encode_sparse(*packed(m))
        deep = F.log_softmax(model.ranking_head(users.hidden), dim=1)
        assert users.wide is not None
        assert torch.equal(model.rank_sparse(users), users.wide + 0.0 * deep)
        _, dense_scores = model(ratings, ratings > 0)
        torch.testing.assert_close(dense_scores, users.wide, rtol=1e-5, atol=1e-5)
        model.config.wide_mix = 0.05
        mixed = model.rank_sparse(users)
    torch.testing.assert_close(mixed, users.wide + 0.05 * deep)


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
    for b, row in enumerate(rows):  # one user alone: the one-user paths, the same answer
        ids, scores, preds = rec.top_k_rows([row], [[5, 30, 3][b]], [everything])[0]
        np.testing.assert_array_equal(ids, got[b][0])
        np.testing.assert_allclose(scores, got[b][1], rtol=1e-6)
        np.testing.assert_allclose(preds, got[b][2], rtol=1e-6, atol=1e-6)


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
