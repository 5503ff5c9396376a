"""Re-ranking the best-scored movies by predicted ratings: its definition, γ = 0, the same
answers on every path (serving, evaluation, all users), choice and checkpoint round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import log_ndtr

from ml import metrics
from ml.baselines import EASE
from ml.checkpoint import save
from ml.data import split_per_user
from ml.evaluate import autoencoder_scorer, ranking_metrics
from ml.fit.config import TrainConfig
from ml.fit.loop import validate
from ml.inference import Recommender
from ml.model import Autoencoder, ModelConfig, SparseUsers, ranks_as_scores
from tests.ml.test_data import random_matrix
from tests.ml.test_item_codes import SMALL, with_codes

N_ITEMS = 30
IDS = list(range(100, 100 + N_ITEMS))


def reranking(m: sp.csr_matrix, weight: float = 0.5, candidates: int = 6) -> Autoencoder:
    """A model whose every rating path contributes, re-ranking its best ``candidates``."""
    model = with_codes(m, dataclasses.replace(SMALL, wide_mix=0.0))
    model.config.rerank_weight = weight
    model.config.rerank_candidates = candidates
    model.config.rerank_sigma = 0.8
    return model


def encoded(model: Autoencoder, rows: sp.csr_matrix) -> SparseUsers:
    return model.encode_sparse(
        torch.from_numpy(rows.indices.astype(np.int64)),
        torch.from_numpy(rows.data),
        torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
    )


def test_reranking_equals_its_definition_on_a_tiny_case() -> None:
    m = random_matrix(40, N_ITEMS)
    model = reranking(m, weight=0.5, candidates=6)
    rows = m[:5]
    blocked = torch.from_numpy(rows.toarray() != 0)
    blocked[:, 2] = True  # a filter as well
    with torch.no_grad():
        users = encoded(model, rows)
        cols, vals, preds = model.top_k_sparse(users, blocked.clone(), 9)
        pred_t, scores_t = model.forward_sparse(
            users.indices, torch.from_numpy(rows.data), users.offsets
        )
    pred, scores = pred_t.double().numpy(), scores_t.double().numpy()
    for b in range(5):
        base = np.where(blocked[b].numpy(), -np.inf, scores[b])
        by_score = np.argsort(-base, kind="stable")
        cand, rest = by_score[:6], by_score[6:9]
        combined = base[cand] + 0.5 * log_ndtr((pred[b, cand] - 3.5) / 0.8)
        order = np.argsort(-combined, kind="stable")
        want_cols = np.concatenate([cand[order], rest])
        want_vals = np.concatenate([combined[order], base[rest]])
        assert cols[b].tolist() == want_cols.tolist()
        np.testing.assert_allclose(vals[b].numpy(), want_vals, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(preds[b].numpy(), pred[b, want_cols], rtol=1e-5, atol=1e-5)
    # Some list did change: the test would not pass with the re-ranking left out.
    with torch.no_grad():
        model.config.rerank_weight = 0.0
        plain, _, _ = model.top_k_sparse(users, blocked.clone(), 9)
    assert not torch.equal(plain, cols)


def test_weight_zero_ranks_exactly_as_ease() -> None:
    m = random_matrix(60, N_ITEMS, density=0.3, seed=4)
    torch.manual_seed(0)
    model = Autoencoder.from_data(m, dataclasses.replace(SMALL, wide_mix=0.0)).eval()
    assert model.item_code_gain is not None
    with torch.no_grad():
        model.item_code_gain.fill_(0.8)  # the rating paths all on: still unread at weight 0
    ease = EASE(lam=model.config.wide_lambda).fit(m)
    want = metrics.top_k(metrics.mask_seen(ease.score(m), m), 10)
    cols, _ = model.top_k_csr(m, 10)
    assert cols.tolist() == want.tolist()
    # The evaluation's scorer ranks the same way as EASE's: the same metrics.
    train, test = split_per_user(m, 0.3, 0)
    model.fit_closed_form_paths(train, rating_path=False)
    ease = EASE(lam=model.config.wide_lambda).fit(train)
    _, ranked = autoencoder_scorer(model, train)
    got = ranking_metrics(ranked, train, test)
    base = ranking_metrics(lambda r: ease.score(train[r]), train, test)
    assert got == base


def test_serving_recommend_all_users_and_evaluation_give_one_ranking(tmp_path: Path) -> None:
    m = random_matrix(40, N_ITEMS, seed=5)
    model = reranking(m, weight=0.5, candidates=6)
    path, _ = save(tmp_path, model, {"movie_ids": IDS})
    rec = Recommender.from_checkpoint(path)
    rows_csr = m[:8]
    cols, vals = model.top_k_csr(rows_csr, 12)
    rows = [
        (rows_csr.indices[a:b].astype(np.int64), rows_csr.data[a:b])
        for a, b in zip(rows_csr.indptr[:-1], rows_csr.indptr[1:], strict=True)
    ]
    everything = np.ones(N_ITEMS, dtype=bool)
    served = rec.top_k_rows(rows, [12] * 8, [everything] * 8)
    _, all_ids, all_scores = next(rec.top_n_matrix(rows_csr, 12))
    for b, (c, v) in enumerate(rows):
        ratings = dict(zip((np.asarray(IDS)[c]).tolist(), v.tolist(), strict=True))
        want = [IDS[j] for j in cols[b]]
        assert served[b][0].tolist() == want
        assert all_ids[b].tolist() == want
        np.testing.assert_allclose(all_scores[b], vals[b], rtol=1e-6)
        np.testing.assert_allclose(served[b][1], vals[b], rtol=1e-6)
        one = rec.recommend(ratings, n=12)
        assert [s.movie_id for s in one] == want
        paged = rec.recommend(ratings, n=4, offset=3)  # pages are slices of one list
        assert [s.movie_id for s in paged] == want[3:7]
        many = rec.recommend_many([ratings], n=12)[0]
        assert [s.movie_id for s in many] == want
        full_pred, _ = rec.score(ratings)
        np.testing.assert_allclose(
            [s.predicted_rating for s in one], full_pred[rec.columns(want)], rtol=1e-5, atol=1e-5
        )
    # The evaluation's scorer reads the same lists.
    _, ranked = autoencoder_scorer(model, m)
    assert metrics.top_k(ranked(np.arange(8)), 12).tolist() == cols.tolist()


def test_checkpoint_round_trip_keeps_the_reranking_and_old_ones_do_not_rerank(
    tmp_path: Path,
) -> None:
    m = random_matrix(40, N_ITEMS, seed=6)
    model = reranking(m, weight=0.3, candidates=7)
    model.config.rerank_sigma = 0.87
    path, _ = save(tmp_path / "new", model, {"movie_ids": IDS})
    rec = Recommender.from_checkpoint(path)
    config = rec.model.config
    assert (config.rerank_weight, config.rerank_candidates, config.rerank_sigma) == (
        0.3,
        7,
        0.87,
    )
    user = {100: 5.0, 103: 2.5, 120: 4.0}
    cols, vals = model.top_k_csr(
        sp.csr_matrix(([5.0, 2.5, 4.0], ([0, 0, 0], [0, 3, 20])), shape=(1, N_ITEMS)), 10
    )
    served = rec.recommend(user, 10)
    assert [s.movie_id for s in served] == [IDS[c] for c in cols[0]]
    np.testing.assert_allclose([s.score for s in served], vals[0], rtol=1e-6)
    # A manifest written before the re-ranking existed has no such keys: EASE's order.
    manifest = json.loads((path / "manifest.json").read_text())
    arch = manifest["architecture"]
    for key in [k for k in arch["config"] if k.startswith("rerank_")]:
        del arch["config"][key]
    old = Autoencoder.from_architecture(arch)
    assert old.config.rerank_weight == 0.0


def test_choose_rerank_keeps_a_candidate_unless_it_clearly_harms() -> None:
    m = random_matrix(80, N_ITEMS, density=0.3, seed=7)
    train, held = split_per_user(m, 0.3, 1)
    model = reranking(train, weight=0.0)
    model.config.rerank_weights = (0.2, 0.5)
    tried = model.choose_rerank(train, held)
    assert set(tried) == {0.0, 0.2, 0.5}
    assert model.config.rerank_weight in (0.2, 0.5)
    assert tried[model.config.rerank_weight] == max(tried[0.2], tried[0.5])
    # A weight that throws the ranking score away (it follows the predicted rating alone,
    # against the relevance built here from what EASE ranks first) is clearly worse: off.
    model.config.rerank_weight = 0.0
    ease_top, _ = model.top_k_csr(train, 3)
    liked = sp.lil_matrix(train.shape, dtype=np.float32)
    for u, cols in enumerate(ease_top):
        for c in cols:
            liked[u, c] = 5.0
    model.config.rerank_weights = (1e6,)
    model.config.rerank_candidates = N_ITEMS
    tried = model.choose_rerank(train, sp.csr_matrix(liked))
    assert tried[0.0] == pytest.approx(1.0)
    assert tried[1e6] < 0.9 and model.config.rerank_weight == 0.0


def test_bad_rerank_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ModelConfig(rerank_weight=-1.0)
    with pytest.raises(ValueError):
        ModelConfig(rerank_candidates=0)
    with pytest.raises(ValueError):
        ModelConfig(rerank_sigma=0.0)


def test_validation_reports_the_served_ranking() -> None:
    m = random_matrix(60, N_ITEMS, density=0.3, seed=8)
    train, held = split_per_user(m, 0.3, 2)
    model = reranking(train, weight=0.5, candidates=8)
    config = TrainConfig(device="cpu", progress=False)
    got = validate(model, train, held, torch.device("cpu"), config)["ndcg@10"]
    cols, vals = model.top_k_csr(train, 10)
    ranked = ranks_as_scores(cols, vals, N_ITEMS)
    want = np.nanmean(metrics.ndcg_at_k(ranked, metrics.relevance(held), 10))
    assert got == pytest.approx(want, abs=1e-6)
    model.config.rerank_weight = 0.0
    plain = validate(model, train, held, torch.device("cpu"), config)["ndcg@10"]
    assert plain != pytest.approx(got, abs=1e-9)
