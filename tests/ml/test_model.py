"""The autoencoder: shapes, masking, learning a planted structure, round trips, sparse path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ml.baselines import EASE
from ml.data import split_per_user
from ml.model import (
    Autoencoder,
    GramSolver,
    ModelConfig,
    ease_weights,
    residual_matrix,
    ridge_item_weights,
    top_k_columns,
    tune_ease_lambda,
    tune_ridge_lambda,
)
from ml.model.linear import cosine_neighbours

CONFIGS = {
    "default": ModelConfig(),
    "deep": ModelConfig(hidden=(16, 8), activation="selu", dropout=0.2),
    "no-wide": ModelConfig(hidden=(12,), wide=False),
    "unnormalised": ModelConfig(hidden=(12,), wide_mix=0.05, normalise=False),
    "tutorial": ModelConfig.tutorial(),
}


def random_ratings(n_users: int = 24, n_items: int = 30, density: float = 0.25) -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 6, size=(n_users, n_items)).astype(np.float32)
    dense[rng.random((n_users, n_items)) > density] = 0.0
    dense[:, 0] = 4.0  # every user has at least one rating
    return sp.csr_matrix(dense)


def dense_batch(m: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    ratings = torch.from_numpy(m.toarray())
    return ratings, ratings > 0


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_and_loss_shapes(name: str) -> None:
    m = random_ratings()
    model = Autoencoder.from_data(m, CONFIGS[name])
    ratings, mask = dense_batch(m)
    with torch.no_grad():
        pred, scores = model.eval()(ratings, mask)
    assert pred.shape == scores.shape == (24, 30)
    assert float(pred.min()) >= 1.0 and float(pred.max()) <= 5.0
    loss, parts = model.train().loss(ratings, mask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert parts["loss"] == pytest.approx(float(loss.detach()))
    assert ("ranking" in parts) == (CONFIGS[name].ranking_loss != "none")


@pytest.mark.parametrize("name", CONFIGS)
def test_unobserved_targets_do_not_change_the_loss(name: str) -> None:
    m = random_ratings()
    model = Autoencoder.from_data(m, CONFIGS[name]).eval()  # eval: no input noise
    ratings, mask = dense_batch(m)
    changed = ratings.clone()
    changed[~mask] = 3.7  # garbage where nothing was observed
    observed = ratings.clone()
    observed[0, 0] = 1.0
    with torch.no_grad():
        loss = float(model.loss(ratings, mask)[0])
        loss_changed = float(model.loss(changed, mask)[0])
        loss_observed = float(model.loss(observed, mask)[0])
    assert loss_changed == pytest.approx(loss, rel=1e-6)
    # ...while an observed target does change it.
    assert loss_observed != pytest.approx(loss, rel=1e-6)


def test_rating_loss_gradient_is_zero_on_unobserved_outputs() -> None:
    m = random_ratings()
    cfg = ModelConfig(hidden=(8,), ranking_loss="none", input_dropout=0.0, wide_rating=False)
    model = Autoencoder.from_data(m, cfg).eval()
    ratings, mask = dense_batch(m)
    grads: dict[str, torch.Tensor] = {}

    def keep_output_grad(_module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        out.register_hook(lambda g: grads.setdefault("out", g))

    model.rating_head.register_forward_hook(keep_output_grad)
    loss, _ = model.loss(ratings, mask)
    loss.backward()
    assert torch.all(grads["out"][~mask] == 0)
    assert torch.any(grads["out"][mask] != 0)


def planted_groups(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Two user groups, each rating only its own block of 10 movies (5 stars for 'likes').
    One liked movie per user is held out; returns (train, held-out column per user)."""
    rng = np.random.default_rng(seed)
    n_users, block = 40, 10
    dense = np.zeros((n_users, 2 * block), dtype=np.float32)
    held = np.zeros(n_users, dtype=np.int64)
    for u in range(n_users):
        start = 0 if u < n_users // 2 else block
        liked = start + rng.choice(block, size=7, replace=False)
        dense[u, liked] = rng.choice([4.0, 5.0], size=7)
        held[u] = liked[0]
        dense[u, held[u]] = 0.0
    return sp.csr_matrix(dense), held


def test_training_learns_a_planted_structure() -> None:
    torch.manual_seed(0)
    train, held = planted_groups()
    cfg = ModelConfig(hidden=(8,), wide=False, wide_rating=False, input_dropout=0.3)
    model = Autoencoder.from_data(train, cfg)
    ratings, mask = dense_batch(train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.eval().loss(ratings, mask)[1]
    model.train()
    for _ in range(150):
        loss, _ = model.loss(ratings, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = model.eval().loss(ratings, mask)[1]
    assert last["rating_mse"] < 0.5 * first["rating_mse"]
    # The multinomial loss cannot go below the entropy of a user's 6 liked movies (log 6).
    assert last["ranking"] < first["ranking"] - 0.5 and last["ranking"] > np.log(6) - 1e-3
    _, scores = model(ratings, mask)
    scores = scores.masked_fill(mask, -torch.inf)
    # A user's 4 unrated movies of the own block (the held-out one among them) must outrank
    # every movie of the other block.
    best = scores.argsort(dim=1, descending=True)[:, :4].numpy()
    rank_hits = np.mean([held[u] in best[u] for u in range(len(held))])
    assert rank_hits == 1.0
    own_block = (best < 10) == (np.arange(40) < 20)[:, None]
    assert own_block.all()


@pytest.mark.parametrize("name", CONFIGS)
def test_architecture_round_trip_gives_identical_outputs(name: str) -> None:
    m = random_ratings()
    model = Autoencoder.from_data(m, CONFIGS[name]).eval()
    arch = json.loads(json.dumps(model.architecture()))
    clone = Autoencoder.from_architecture(arch)
    clone.load_state_dict(model.state_dict())
    ratings, mask = dense_batch(m)
    for a, b in zip(model(ratings, mask), clone.eval()(ratings, mask), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", CONFIGS)
def test_sparse_forward_equals_dense_forward(name: str) -> None:
    m = random_ratings()
    model = Autoencoder.from_data(m, CONFIGS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial weights everywhere, heads included
            p.add_(0.05 * torch.randn_like(p))
        dense = model(*dense_batch(m))
        sparse = model.forward_sparse(
            torch.from_numpy(m.indices), torch.from_numpy(m.data), torch.from_numpy(m.indptr[:-1])
        )
    for a, b in zip(dense, sparse, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_tutorial_ranks_by_predicted_rating_and_has_no_extras() -> None:
    model = Autoencoder.from_data(random_ratings(), ModelConfig.tutorial()).eval()
    pred, scores = model(*dense_batch(random_ratings()))
    assert torch.equal(pred, scores)
    assert model.ranking_head is None and model.wide is None and model.wide_rating is None
    assert [layer.out_features for layer in model.encoder] == [10]


def test_wide_paths_start_from_closed_forms_with_zero_diagonal() -> None:
    model = Autoencoder.from_data(random_ratings(), ModelConfig())
    for weights in (model.wide, model.wide_rating):
        assert weights is not None and float(weights.abs().sum()) > 0
        assert torch.all(torch.diagonal(weights) == 0)


def test_wide_paths_are_dropped_for_large_catalogues() -> None:
    model = Autoencoder.from_data(random_ratings(), ModelConfig(wide_max_items=10))
    assert model.wide is None and model.wide_rating is None and model.item_code is None
    # The item autoencoder grows with users × movies: left out above item_code_max_cells.
    few_cells = Autoencoder.from_data(random_ratings(), ModelConfig(item_code_max_cells=100))
    assert few_cells.item_code is None and few_cells.config.item_codes == 0


def test_item_embeddings_have_one_row_per_movie() -> None:
    model = Autoencoder.from_data(random_ratings(), ModelConfig(hidden=(12, 4)))
    assert model.item_embeddings().shape == (30, 12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation": "swishy"},
        {"hidden": ()},
        {"dropout": 1.0},
        {"ranking_loss": "bpr"},
        {"wide_lambdas": (100.0, 0.0)},
        {"wide_rating_lambda": -1.0},
        {"wide_mixes": (-0.1,)},
        {"tune_frac": 1.0},
    ],
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


def test_from_dict_refuses_unknown_keys_and_from_data_needs_ratings() -> None:
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"hiden": [3]})
    with pytest.raises(ValueError, match="no ratings"):
        Autoencoder.from_data(sp.csr_matrix((3, 4), dtype=np.float32), ModelConfig())


# ------------------------------------------------------------------ tuned closed-form paths
def test_gram_solver_equals_a_fresh_inverse_for_every_lambda() -> None:
    m = random_ratings()
    x = (m > 0).astype(np.float64)
    solver = GramSolver((x.T @ x).toarray())
    for lam in (1.0, 10.0, 300.0):
        np.testing.assert_allclose(solver.solve(lam), ease_weights(m, lam), atol=1e-5)
    resid = residual_matrix(m, 3.0, np.zeros(30, dtype=np.float32), 3.0)
    ridge = GramSolver((resid.T @ resid).toarray()).solve(50.0)
    np.testing.assert_allclose(ridge, ridge_item_weights(resid, 50.0), atol=1e-5)


def test_ease_lambda_tuning_matches_the_ease_baseline() -> None:
    train, _ = planted_groups()
    lambdas = (0.5, 5.0, 50.0, 500.0)
    best, tried = tune_ease_lambda(train, lambdas, 0.2, seed=3)
    baseline, baseline_tried = EASE.tuned(train, lambdas, val_frac=0.2, seed=3)
    assert set(tried) == set(lambdas) and best == max(tried, key=lambda k: tried[k])
    assert best == baseline.lam
    for lam in lambdas:
        assert tried[lam] == pytest.approx(baseline_tried[lam], abs=1e-9)
    # A slice without a relevant rating cannot choose.
    low = train.copy()
    low.data[:] = 1.0
    assert tune_ease_lambda(low, lambdas, 0.2, seed=3) == (None, {})


def test_from_data_records_the_tuned_lambda_and_keeps_the_callers_config() -> None:
    train, _ = planted_groups()
    cfg = ModelConfig(hidden=(8,), wide_lambdas=(0.5, 5000.0), wide_lambda=123.0)
    model = Autoencoder.from_data(train, cfg)
    _, tried = tune_ease_lambda(train, (0.5, 5000.0), cfg.tune_frac, cfg.tune_seed)
    assert model.config.wide_lambda == max(tried, key=lambda k: tried[k])
    assert cfg.wide_lambda == 123.0  # the caller's config is not modified
    assert model.wide is not None
    expected = ease_weights(sp.csr_matrix(train, dtype=np.float32), model.config.wide_lambda)
    np.testing.assert_allclose(model.wide.detach().numpy(), expected, atol=1e-6)
    assert Autoencoder.from_architecture(model.architecture()).config == model.config
    untuned = Autoencoder.from_data(train, ModelConfig(hidden=(8,), wide_lambdas=()))
    assert untuned.config.wide_lambda == ModelConfig().wide_lambda


def test_ridge_tuning_fits_its_gain_and_sets_the_model() -> None:
    m = random_ratings(60, 30, 0.4)
    cfg = ModelConfig(hidden=(8,), wide_rating_lambdas=(1.0, 30.0, 1000.0))
    best, gain, errors = tune_ridge_lambda(m, cfg, cfg.wide_rating_lambdas, 0.2, 0)
    assert best == min(errors, key=lambda k: errors[k]) and all(np.isfinite(list(errors.values())))
    model = Autoencoder.from_data(m, cfg)
    assert model.config.wide_rating_lambda == best
    assert model.wide_rating_gain is not None
    assert float(model.wide_rating_gain.detach()) == pytest.approx(gain)


def test_choose_wide_mix_keeps_the_best_candidate_on_held_out_ratings() -> None:
    full, _ = planted_groups()
    train, held_out = split_per_user(full, 0.3, 0)
    model = Autoencoder.from_data(train, ModelConfig(hidden=(8,), wide_mixes=(0.0, 0.5, 50.0)))
    with torch.no_grad():
        assert model.ranking_head is not None
        model.ranking_head.weight.normal_()  # a deep head of pure noise
    tried = model.choose_wide_mix(train, held_out)
    assert set(tried) == {0.0, 0.5, 50.0}
    assert model.config.wide_mix == max(tried, key=lambda k: tried[k])
    assert tried[0.0] >= tried[50.0]  # noise that dominates the ranking cannot help
    # With mix 0 the served ranking is the EASE path's alone.
    model.config.wide_mix = 0.0
    ratings, mask = dense_batch(train)
    with torch.no_grad():
        _, scores = model.eval()(ratings, mask)
    assert model.wide is not None
    wide = mask.float() @ model.wide
    torch.testing.assert_close(scores, wide)
    no_wide = Autoencoder.from_data(train, ModelConfig(hidden=(8,), wide=False))
    assert no_wide.choose_wide_mix(train, held_out) == {}


def test_calibration_refits_the_rating_path_scales_by_least_squares() -> None:
    full = random_ratings(80, 30, 0.4)
    train, held_out = split_per_user(full, 0.25, 0)
    model = Autoencoder.from_data(train, ModelConfig(hidden=(8,))).eval()
    with torch.no_grad():
        assert model.wide_rating_gain is not None
        model.rating_head.weight.normal_(std=0.5)  # an overconfident deep rating head
        model.wide_rating_gain.fill_(1.0)
    old_gain = float(model.wide_rating_gain.detach())
    facts = model.calibrate_rating_paths(train, held_out)
    assert facts["rmse_after"] <= facts["rmse_before"]
    assert float(model.wide_rating_gain.detach()) == pytest.approx(old_gain * facts["ridge_scale"])
    # The module now predicts with the fitted scales: held-out RMSE as reported.
    coo = held_out.tocoo()
    with torch.no_grad():
        pred, _ = model(*dense_batch(train))
    rmse = float(np.sqrt(np.mean((pred.numpy()[coo.row, coo.col] - coo.data) ** 2)))
    assert rmse == pytest.approx(facts["rmse_after"], rel=1e-4)
    tutorial = Autoencoder.from_data(train, ModelConfig.tutorial())
    assert tutorial.calibrate_rating_paths(train, held_out) == {}


def test_refitting_closed_form_paths_checks_the_catalogue() -> None:
    model = Autoencoder.from_data(random_ratings(), ModelConfig(hidden=(8,)))
    with pytest.raises(ValueError, match="30"):
        model.fit_closed_form_paths(random_ratings(24, 12))


@pytest.mark.parametrize("n_cols", [50, 87_000, 87_001])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_top_k_columns_is_topk(n_cols: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n_cols + k)
    scores = torch.randn(5, n_cols, generator=gen)
    scores[:, ::7] = -torch.inf  # blocked columns
    values, cols = top_k_columns(scores, k)
    want = torch.topk(scores, k, dim=1)
    assert torch.equal(values, want.values) and torch.equal(cols, want.indices)


def test_top_k_columns_with_fewer_allowed_columns_than_k() -> None:
    scores = torch.full((3, 87_001), -torch.inf)  # 87,001: columns past the last whole chunk
    scores[0, [5, 87_000]] = torch.tensor([2.0, 3.0])
    scores[1, 40_000] = 1.0  # row 2: nothing allowed
    values, cols = top_k_columns(scores, 10)
    want = torch.topk(scores, 10, dim=1)
    assert torch.equal(values, want.values)  # the same values, −inf in the tail
    assert cols[0, :2].tolist() == [87_000, 5] and cols[1, 0].item() == 40_000
    assert int(cols.max()) < scores.shape[1]


def test_cosine_neighbours_match_the_dense_cosine_in_any_chunking() -> None:
    m = random_ratings(40, 30, density=0.3)
    x = (m.toarray() != 0).astype(np.float64)
    norms = np.linalg.norm(x, axis=0)
    cosine = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cosine, -1.0)
    for chunk in (1, 7, 512):
        cols, sims = cosine_neighbours(m, 5, chunk=chunk)
        assert cols.shape == sims.shape == (30, 5)
        for j in range(30):
            assert j not in cols[j]
            assert np.allclose(sims[j], np.sort(cosine[:, j])[::-1][:5], atol=1e-6)
            assert np.allclose(cosine[cols[j], j], sims[j], atol=1e-6)
