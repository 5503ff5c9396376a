"""The autoencoder: shapes, masking, learning a planted structure, round trips, sparse path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ml.model import Autoencoder, ModelConfig

CONFIGS = {
    "default": ModelConfig(),
    "tied-deep": ModelConfig(hidden=(16, 8), tied=True, activation="selu", dropout=0.2),
    "weighted": ModelConfig(hidden=(12,), ranking_loss="weighted_mse", wide=False),
    "sum-refeed": ModelConfig(hidden=(12,), wide_mode="sum", refeed=True, normalise=False),
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
    assert ("refeed_mse" in parts) == CONFIGS[name].refeed


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
    assert model.wide is None and model.wide_rating is None


def test_item_embeddings_have_one_row_per_movie() -> None:
    model = Autoencoder.from_data(random_ratings(), ModelConfig(hidden=(12, 4)))
    assert model.item_embeddings().shape == (30, 12)


@pytest.mark.parametrize(
    "kwargs",
    [{"activation": "swishy"}, {"hidden": ()}, {"dropout": 1.0}, {"ranking_loss": "bpr"}],
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


def test_from_dict_refuses_unknown_keys_and_from_data_needs_ratings() -> None:
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"hiden": [3]})
    with pytest.raises(ValueError, match="no ratings"):
        Autoencoder.from_data(sp.csr_matrix((3, 4), dtype=np.float32), ModelConfig())
