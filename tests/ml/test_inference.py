"""ml.inference.Recommender: the behaviours every scorer must have, on a tiny trained model."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ml.checkpoint import load, save
from ml.fit.config import TrainConfig
from ml.fit.pipeline import fit
from ml.inference import HalfLinear, Recommender, Scored, half_linear_available
from ml.model import Autoencoder, user_offsets
from ml.model.linear import cosine_neighbours
from tests.ml.test_checkpoint import TINY
from tests.ml.test_data import random_matrix

N_ITEMS = 25
MOVIE_IDS = np.arange(1000, 1000 + 3 * N_ITEMS, 3)  # ids are not column numbers
USER = {1000: 5.0, 1003: 4.0, 1030: 1.5, 1060: 3.0}
TINY_NO_EASE = dataclasses.replace(TINY, wide=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = random_matrix(40, N_ITEMS, density=0.3, seed=2)
    config = TrainConfig(epochs=3, batch_size=8, device="cpu", progress=False, model=TINY)
    model, _ = fit(train, None, config)
    assert model.item_code_gain is not None
    with torch.no_grad():  # the item-code path's weight, as calibrate_rating_paths sets it
        model.item_code_gain.fill_(0.8)
    popularity = np.diff(train.tocsc().indptr)
    manifest = {
        "movie_ids": MOVIE_IDS.tolist(),
        "popularity": popularity.tolist(),
        "metrics": {"validation": {}},
    }
    path, _ = save(tmp_path_factory.mktemp("models"), model, manifest)
    return path


@pytest.fixture(scope="module")
def rec(ckpt: Path) -> Recommender:
    return Recommender.from_checkpoint(ckpt, device="cpu")


def ids(items: list[Scored]) -> list[int]:
    return [s.movie_id for s in items]


def test_loaded_recommender_describes_its_checkpoint(rec: Recommender, ckpt: Path) -> None:
    assert rec.version_name == ckpt.name
    assert rec.movie_ids.tolist() == MOVIE_IDS.tolist()
    assert rec.manifest["weights_sha256"]
    with pytest.raises(ValueError):
        rec.movie_ids[0] = 1  # immutable after load


def test_rated_excluded_and_filtered_movies_are_never_returned(rec: Recommender) -> None:
    allowed = np.ones(N_ITEMS, dtype=bool)
    allowed[[2, 3, 4]] = False  # columns of ids 1006, 1009, 1012
    items = rec.recommend(USER, n=N_ITEMS, exclude=[1015, 1018, 424242], allowed=allowed)
    got = set(ids(items))
    assert not got & set(USER)
    assert not got & {1015, 1018, 1006, 1009, 1012}
    assert len(items) == N_ITEMS - len(USER) - 2 - 3  # everything else, nothing twice
    scores = [s.score for s in items]
    assert scores == sorted(scores, reverse=True)


def test_n_and_offset_page_through_one_ranking(rec: Recommender) -> None:
    full = rec.recommend(USER, n=10)
    assert len(full) == 10
    assert rec.recommend(USER, n=4, offset=3) == full[3:7]
    assert rec.recommend(USER, n=5, offset=N_ITEMS) == []
    assert rec.recommend(USER, n=0) == []
    with pytest.raises(ValueError):
        rec.recommend(USER, n=-1)


def test_user_without_ratings_gets_a_defined_answer(rec: Recommender) -> None:
    items = rec.recommend({}, n=5)
    assert len(items) == 5 and all(math.isfinite(s.score) for s in items)
    assert rec.recommend([], n=5) == items
    assert rec.recommend({99999: 4.0}, n=5) == items  # unknown movies are ignored


def test_input_forms_agree_and_bad_ratings_are_refused(rec: Recommender) -> None:
    assert rec.recommend(list(USER.items()), n=6) == rec.recommend(USER, n=6)
    with pytest.raises(ValueError, match="outside the scale"):
        rec.recommend({1000: 7.0})
    with pytest.raises(ValueError, match="pairs"):
        rec.recommend([(1000, "good")])  # type: ignore[list-item]


def test_index_of_and_predict_handle_unknown_ids(rec: Recommender) -> None:
    cols, unknown = rec.index_of([1003, 5, 1000, 1001])
    assert cols.tolist() == [1, 0] and unknown == [5, 1001]
    pred = rec.predict(USER, [1006, 5])
    assert pred[5] is None
    assert pred[1006] is not None and 0.5 <= pred[1006] <= 5.0


def test_fallback_predictions_name_their_source(rec: Recommender) -> None:
    known = rec.predict_with_fallback(USER, [1006, 5])
    assert [p.source for p in known] == ["model", "bias"]
    stranger = rec.predict_with_fallback({}, [1006, 5])
    assert [p.source for p in stranger] == ["bias", "global_mean"]
    assert stranger[1].value == pytest.approx(rec.global_mean)
    assert all(0.5 <= p.value <= 5.0 for p in known + stranger)


def test_the_bias_fallback_uses_the_models_own_user_offset(rec: Recommender) -> None:
    """A movie the model lacks gets μ + b_u with the b_u the model's baseline computes (one
    formula, one shrinkage: ``user_bias_reg``), not a second shrinkage of its own."""
    cols, _ = rec.index_of(USER)
    row = sp.csr_matrix((list(USER.values()), ([0] * len(cols), cols.tolist())), shape=(1, N_ITEMS))
    item_bias = rec.model.item_bias.numpy()
    b_u = user_offsets(row, float(rec.model.global_mean), item_bias, TINY.user_bias_reg)[0]
    (fallback,) = rec.predict_with_fallback(USER, [5])
    assert fallback.source == "bias"
    assert fallback.value == pytest.approx(float(rec.model.global_mean) + b_u, abs=1e-5)


def test_sparse_serving_path_matches_the_dense_forward(rec: Recommender) -> None:
    pred, scores = rec.score(USER)
    dense = torch.zeros(1, N_ITEMS)
    cols, _ = rec.index_of(USER)
    dense[0, torch.from_numpy(cols)] = torch.tensor(list(USER.values()))
    with torch.no_grad():
        d_pred, d_scores = rec.model(dense, dense != 0)
    assert np.allclose(pred, d_pred[0].numpy(), atol=1e-5)
    assert np.allclose(scores, d_scores[0].numpy(), atol=1e-5)


def test_batched_paths_agree_with_single_requests(rec: Recommender) -> None:
    users = [USER, {}, {1009: 2.0, 1012: 4.5}]
    many = rec.recommend_many(users, n=4)
    for user, got in zip(users, many, strict=True):
        single = rec.recommend(user, n=4)
        assert ids(got) == ids(single)
        assert [s.score for s in got] == pytest.approx([s.score for s in single], abs=1e-5)
    matrix = sp.csr_matrix(
        ([5.0, 4.0, 2.0], ([0, 0, 1], [0, 1, 3])), shape=(2, N_ITEMS), dtype=np.float32
    )
    (_, top_ids, _), *_ = rec.top_n_matrix(matrix, 4)
    assert top_ids[0].tolist() == ids(rec.recommend({1000: 5.0, 1003: 4.0}, n=4))
    assert top_ids[1].tolist() == ids(rec.recommend({1009: 2.0}, n=4))


def test_similar_excludes_the_movie_itself(rec: Recommender) -> None:
    items = rec.similar(1000, n=5)
    assert len(items) == 5 and 1000 not in ids(items)
    scores = [s.score for s in items]
    assert scores == sorted(scores, reverse=True)
    assert len(rec.similar(1000, n=1000)) == N_ITEMS - 1
    with pytest.raises(KeyError):
        rec.similar(5)


def test_similar_movies_are_the_ease_column_of_the_movie(rec: Recommender) -> None:
    """The item–item part answers: the movies with the largest weights B[:, col] towards it
    (on MovieLens-100K series it finds sequels; the ranking head's rows did not)."""
    assert rec.model.wide is not None
    col = 4
    weights = rec.model.wide.detach()[:, col].clone()
    weights[col] = -math.inf
    expected = torch.topk(weights, 6).indices.tolist()
    items = rec.similar(int(MOVIE_IDS[col]), n=6)
    assert ids(items) == MOVIE_IDS[expected].tolist()
    assert [s.score for s in items] == pytest.approx(weights[expected].tolist())


def test_similar_movies_without_ease_are_the_stored_cosine_neighbours(tmp_path: Path) -> None:
    """Above wide_max_items (or in the tutorial model) EASE is off; similar films are each
    movie's nearest by cosine over the rating matrix, stored in the checkpoint."""
    train = random_matrix(30, 20)
    model = Autoencoder.from_data(train, TINY_NO_EASE).eval()
    assert model.wide is None and model.similar_cols is not None
    path, _ = save(tmp_path, model, {"movie_ids": list(range(20)), "metrics": {}})
    rec = Recommender.from_checkpoint(path)
    cols, sims = cosine_neighbours(train, TINY_NO_EASE.similar_k)
    items = rec.similar(3, n=5)
    known = cols[3][cols[3] >= 0]
    assert ids(items) == known[:5].tolist() and 3 not in ids(items)
    assert [s.score for s in items] == pytest.approx(sims[3][: len(items)].tolist())
    assert len(rec.similar(3, n=1000)) == len(known)  # never padding, never -inf


def test_similar_movies_of_a_checkpoint_without_neighbours_use_the_item_embeddings(
    tmp_path: Path,
) -> None:
    """A checkpoint written before the neighbours were stored (no similar_k) keeps its
    answers: the cosine of the ranking head's rows."""
    config = dataclasses.replace(TINY_NO_EASE, similar_k=0)
    model = Autoencoder.from_data(random_matrix(30, 20), config).eval()
    assert model.wide is None and model.similar_cols is None
    path, _ = save(tmp_path, model, {"movie_ids": list(range(20)), "metrics": {}})
    rec = Recommender.from_checkpoint(path)
    unit = torch.nn.functional.normalize(model.item_embeddings(), dim=1)
    sims = unit @ unit[3]
    sims[3] = -math.inf
    assert ids(rec.similar(3, n=5)) == torch.topk(sims, 5).indices.tolist()


def test_popular_follows_the_training_counts(rec: Recommender) -> None:
    counts = np.asarray(rec.manifest["popularity"])
    top = rec.popular(5)
    assert [s.score for s in top] == sorted(counts, reverse=True)[:5]
    allowed = np.zeros(N_ITEMS, dtype=bool)
    allowed[[0, 1]] = True
    assert set(ids(rec.popular(5, allowed=allowed))) == {1000, 1003}


def test_round_trip_through_two_loads_gives_identical_scores(ckpt: Path) -> None:
    a = Recommender.from_checkpoint(ckpt).score(USER)
    b = Recommender.from_checkpoint(ckpt).score(USER)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("shared", [None, "everything", "some"])
def test_top_k_rows_agrees_with_recommend_for_each_row(
    rec: Recommender, shared: str | None
) -> None:
    users = [USER, {1006: 2.0, 1009: 5.0}, {1012: 4.0}]
    everything = np.ones(rec.n_items, dtype=bool)
    some = rec.movie_ids % 2 == 0
    # a mask per user, or one mask object for the batch (no filter, or one filter)
    masks = [everything, some, everything]
    if shared is not None:
        masks = [everything if shared == "everything" else some] * len(users)
    rows = [rec._encode(u) for u in users]
    got = rec.top_k_rows(rows, [5, 3, 40], masks)
    for user, mask, k, (movie_ids, scores, preds) in zip(
        users, masks, [5, 3, 40], got, strict=True
    ):
        expected = rec.recommend(user, n=k, allowed=mask)
        assert movie_ids.tolist() == ids(expected)
        assert scores.tolist() == pytest.approx([e.score for e in expected], rel=1e-5)
        assert preds.tolist() == pytest.approx([e.predicted_rating for e in expected], rel=1e-5)
        assert not set(movie_ids.tolist()) & set(user)
        assert all(mask[rec.columns(movie_ids)])
    # all the allowed movies but the rated one, never more
    assert len(got[2][0]) == masks[2].sum() - masks[2][rec.columns([1012])].sum()
    with pytest.raises(ValueError, match="shape"):
        rec.top_k_rows(rows[:1], [3], [np.ones(3, dtype=bool)])


def test_bfloat16_weights_give_nearly_the_same_answers(rec: Recommender, ckpt: Path) -> None:
    half = Recommender.from_checkpoint(ckpt, device="cpu", precision="bfloat16")
    assert half.precision == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    pred, scores = half.score(USER)
    assert pred.dtype == np.float32 and scores.dtype == np.float32
    full_pred, full_scores = rec.score(USER)
    assert np.abs(pred - full_pred).max() < 0.1  # bfloat16 keeps about 3 significant digits
    assert np.corrcoef(scores, full_scores)[0, 1] > 0.99
    assert not set(ids(half.recommend(USER, n=10))) & set(USER)


needs_half = pytest.mark.skipif(
    not half_linear_available(), reason="fbgemm's float16 kernels are x86-only"
)


@needs_half
def test_half_linear_is_the_float32_layer_with_float16_weights() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 300)
    half = HalfLinear(layer)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        got, want = half(x), layer(x)
        rounded = torch.nn.functional.linear(x, layer.weight.half().float(), layer.bias)
    assert got.dtype == torch.float32 and got.shape == (5, 300)
    # exactly the float16-rounded weights' product, up to float32 summation order
    torch.testing.assert_close(got, rounded, rtol=1e-5, atol=1e-5)
    assert 0 < (got - want).abs().max() < 1e-2


@needs_half
def test_float16_head_keeps_rankings_and_every_predicted_rating(
    rec: Recommender, ckpt: Path
) -> None:
    half = Recommender.from_checkpoint(ckpt, device="cpu", precision="float16")
    assert half.precision == "float16"
    assert isinstance(half.model.ranking_head, HalfLinear)
    # every other weight stays float32
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    users = [USER, {1003: 2.0}, {}, {m: 4.0 for m in MOVIE_IDS[::2].tolist()}]
    for user in users:
        want = {s.movie_id: s for s in rec.recommend(user, n=N_ITEMS)}
        got = half.recommend(user, n=N_ITEMS)
        assert {g.movie_id for g in got} == set(want)
        for g in got:  # the same scores, up to the weights' rounding
            assert g.score == pytest.approx(want[g.movie_id].score, abs=1e-3)
            # the rating paths read no ranking-head weight: ratings are the float32 ones
            assert g.predicted_rating == want[g.movie_id].predicted_rating
        # the same order, but among near-ties (the tiny model has many)
        true_scores = [want[g.movie_id].score for g in got]
        assert all(b <= a + 2e-3 for a, b in itertools.pairwise(true_scores))


def test_float16_needs_a_ranking_head_and_a_cpu(ckpt: Path) -> None:
    manifest, state = load(ckpt)
    model = Autoencoder.from_architecture(manifest["architecture"])
    model.load_state_dict(state)
    model.ranking_head = None  # a rating-only model
    with pytest.raises(ValueError, match="ranking head"):
        Recommender(model, manifest, ckpt, torch.device("cpu"), precision="float16")
    assert Recommender(model, manifest, ckpt, torch.device("cpu"), "auto").precision == "float32"


def test_precision_auto_keeps_float32_for_small_catalogues_and_bad_names_fail(ckpt: Path) -> None:
    assert Recommender.from_checkpoint(ckpt, precision="auto").precision == "float32"
    with pytest.raises(ValueError, match="precision"):
        Recommender.from_checkpoint(ckpt, precision="int3")
