"""ml.data: loading from both stores, the binary COPY parser, splits and dense batches."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sqlalchemy import text

from ml.data import (
    DataError,
    _Columns,
    densify,
    load_ratings,
    parse_copy_stream,
    remap_columns,
    split_per_user,
    split_ratings,
    validation_split,
)

MOVIES = [10, 20, 30, 40]  # movie 40 has no rating
RATINGS = [(1, 10, 4.0), (1, 30, 2.5), (2, 20, 5.0), (3, 10, 1.0), (3, 20, 3.5), (3, 30, 0.5)]


def insert_store(engine, movies=MOVIES, ratings=RATINGS) -> None:
    """Rows inserted with plain SQL against the table contract."""
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO movies (id, title, genres) VALUES (:id, :t, '')"),
            [{"id": m, "t": f"movie {m}"} for m in movies],
        )
        if not ratings:
            return
        users = sorted({u for u, _, _ in ratings})
        conn.execute(text("INSERT INTO users (id) VALUES (:id)"), [{"id": u} for u in users])
        conn.execute(
            text("INSERT INTO ratings (user_id, movie_id, rating) VALUES (:u, :m, :r)"),
            [{"u": u, "m": m, "r": r} for u, m, r in ratings],
        )


def random_matrix(n_users: int = 40, n_items: int = 30, density: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=rng)
    m.data = rng.integers(1, 11, size=m.nnz).astype(np.float32) / 2
    return sp.csr_matrix(m, dtype=np.float32)


def test_load_ratings_reads_every_rating_and_every_movie(database) -> None:
    insert_store(database.engine)
    data = load_ratings(database.url)
    assert data.user_ids.tolist() == [1, 2, 3]
    assert data.movie_ids.tolist() == MOVIES
    assert data.matrix.shape == (3, 4)
    assert data.matrix.dtype == np.float32
    dense = data.matrix.toarray()
    for u, m, r in RATINGS:
        assert dense[data.user_ids.tolist().index(u), MOVIES.index(m)] == r
    assert data.matrix.nnz == len(RATINGS)
    assert dense[:, MOVIES.index(40)].sum() == 0
    assert data.newest_rating is not None
    assert data.snapshot() == {
        "users": 3,
        "items": 4,
        "ratings": 6,
        "newest_rating": data.newest_rating,
    }


def test_load_ratings_of_an_empty_store(database) -> None:
    insert_store(database.engine, ratings=[])
    data = load_ratings(database.url)
    assert data.matrix.shape == (0, 4)
    assert data.newest_rating is None


def _copy_stream(rows: list[tuple[int, int, float]]) -> bytes:
    out = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    for u, m, r in rows:
        out += struct.pack(">hiiiiid", 3, 4, u, 4, m, 8, r)
    return out + struct.pack(">h", -1)


@pytest.mark.parametrize("buffer", [16, 45, 1 << 20])
@pytest.mark.parametrize("chunk", [1, 7, 29, 30, 31, 4096])
def test_copy_parser_handles_any_chunking(
    chunk: int, buffer: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ml.data.COPY_BUFFER", buffer)
    rows = [(i, 1000 + i, (i % 10 + 1) / 2) for i in range(200)]
    stream = _copy_stream(rows)
    cols = _Columns(4)
    parse_copy_stream((stream[i : i + chunk] for i in range(0, len(stream), chunk)), cols)
    assert cols.users.array().tolist() == [u for u, _, _ in rows]
    assert cols.movies.array().tolist() == [m for _, m, _ in rows]
    assert np.allclose(cols.ratings.array(), [r for _, _, r in rows])


def test_copy_parser_refuses_truncated_or_foreign_streams() -> None:
    stream = _copy_stream([(1, 2, 3.0), (4, 5, 1.5)])
    with pytest.raises(DataError, match="truncated"):
        parse_copy_stream([stream[:-10]], _Columns(4))
    with pytest.raises(DataError, match="signature"):
        parse_copy_stream([b"user_id,movie_id\n" + stream], _Columns(4))


def test_split_ratings_is_a_deterministic_partition() -> None:
    m = random_matrix()
    train, held = split_ratings(m, 0.2, seed=3)
    assert held.nnz == round(0.2 * m.nnz)
    assert train.nnz + held.nnz == m.nnz
    assert abs(train + held - m).sum() == 0
    assert train.multiply(held).nnz == 0
    again_train, again_held = split_ratings(m, 0.2, seed=3)
    assert (again_held != held).nnz == 0 and (again_train != train).nnz == 0
    _, other = split_ratings(m, 0.2, seed=4)
    assert (other != held).nnz > 0


def test_split_per_user_holds_out_a_share_of_every_row() -> None:
    m = random_matrix(n_users=60, n_items=40, density=0.25)
    train, held = split_per_user(m, 0.25, seed=1, min_ratings=2)
    counts = np.diff(m.indptr)
    held_counts = np.diff(held.indptr)
    train_counts = np.diff(train.indptr)
    assert abs(train + held - m).sum() == 0
    eligible = counts >= 2
    assert np.all(held_counts[~eligible] == 0)
    assert np.all(train_counts[eligible] >= 1)  # never a whole row held out
    expected = np.minimum(np.maximum(1, np.rint(0.25 * counts)), counts - 1)
    assert np.array_equal(held_counts[eligible], expected[eligible])
    again = split_per_user(m, 0.25, seed=1, min_ratings=2)[1]
    assert (again != held).nnz == 0


def test_validation_split_and_bad_fractions() -> None:
    m = random_matrix()
    train, val = validation_split(m, 0.1, seed=0)
    assert val.nnz > 0 and train.nnz + val.nnz == m.nnz
    with pytest.raises(ValueError, match="fraction"):
        split_ratings(m, 1.5, seed=0)


def test_densify_builds_the_requested_rows_only() -> None:
    m = random_matrix(n_users=25, n_items=12)
    rows = np.array([7, 0, 24, 7])
    x, mask = densify(m, rows, "cpu")
    assert x.shape == (4, 12) and mask.shape == (4, 12)
    assert x.dtype == torch.float32 and mask.dtype == torch.bool
    expected = m[rows].toarray()
    assert np.array_equal(x.numpy(), expected)
    assert np.array_equal(mask.numpy(), expected != 0)
    empty_x, empty_mask = densify(sp.csr_matrix((3, 12), dtype=np.float32), np.array([1]), "cpu")
    assert float(empty_x.sum()) == 0 and not bool(empty_mask.any())


def test_remap_columns_follows_another_vocabulary() -> None:
    m = sp.csr_matrix(np.array([[1.0, 2.0, 3.0], [0.0, 4.0, 0.0]], dtype=np.float32))
    out = remap_columns(m, np.array([10, 20, 30]), np.array([30, 99, 10]))
    assert out.toarray().tolist() == [[3.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
