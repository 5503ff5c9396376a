"""Ratings from the SQL store as a CSR matrix, deterministic splits and dense mini-batches.

The store is read with one streamed query against the table contract
(``ratings(user_id, movie_id, rating, rated_at)``, ``movies(id)``): PostgreSQL through
``COPY (...) TO STDOUT (FORMAT BINARY)`` parsed chunk by chunk with numpy, SQLite through a
cursor and ``fetchmany``. Ratings land in growing numpy arrays, never as one Python object per
rating held at once, so memory grows with the number of ratings only. No dense
users x items matrix is ever built: training densifies a few rows at a time (:func:`densify`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

RATINGS_QUERY = "SELECT user_id, movie_id, rating FROM ratings"
# Casts make every PostgreSQL row the same 30 bytes in binary COPY (see _parse_copy_rows).
PG_COPY = (
    "COPY (SELECT user_id::int4, movie_id::int4, rating::float8 FROM ratings) "
    "TO STDOUT (FORMAT BINARY)"
)
FETCH_ROWS = 65_536  # rows per fetchmany on SQLite
COPY_BUFFER = 1 << 20  # bytes of COPY output gathered before numpy parses them

_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_HEADER_LEN = len(_PG_SIGNATURE) + 8  # signature, flags (int32), extension length (int32)
_PG_ROW = np.dtype(
    [
        ("n_fields", ">i2"),
        ("len_user", ">i4"),
        ("user", ">i4"),
        ("len_movie", ">i4"),
        ("movie", ">i4"),
        ("len_rating", ">i4"),
        ("rating", ">f8"),
    ]
)


class DataError(Exception):
    """The store cannot be read into a ratings matrix (empty, unreachable, unexpected format)."""


@dataclass
class RatingsData:
    """The ratings of the store as a users x movies CSR matrix with its id vocabularies."""

    matrix: sp.csr_matrix  # (n_users, n_items) float32 ratings, rows = users, cols = items
    user_ids: np.ndarray  # (n_users,) int64 store ids, row order (users with >= 1 rating)
    movie_ids: np.ndarray  # (n_items,) int64 store ids, column order (every movie in the store)
    newest_rating: str | None  # ISO time of the newest rating

    @property
    def n_users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[1])

    def snapshot(self) -> dict[str, Any]:
        """What the checkpoint manifest records about the data it was trained on."""
        return {
            "users": self.n_users,
            "items": self.n_items,
            "ratings": int(self.matrix.nnz),
            "newest_rating": self.newest_rating,
        }


class _Growing:
    """A 1-D numpy array that doubles its capacity as values are appended."""

    def __init__(self, dtype: np.dtype | type, capacity: int = 1 << 16) -> None:
        self._buf = np.empty(max(capacity, 1), dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self._buf):
            grown = np.empty(max(need, 2 * len(self._buf)), dtype=self._buf.dtype)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : need] = values
        self.size = need

    def array(self) -> np.ndarray:
        return self._buf[: self.size]


class _Columns:
    """The three rating columns read so far (user id, movie id, rating)."""

    def __init__(self, capacity: int) -> None:
        self.users = _Growing(np.int64, capacity)
        self.movies = _Growing(np.int64, capacity)
        self.ratings = _Growing(np.float32, capacity)

    def extend(self, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray) -> None:
        self.users.extend(users)
        self.movies.extend(movies)
        self.ratings.extend(ratings)


def _parse_copy_rows(buf: bytes | bytearray | memoryview, cols: _Columns) -> int:
    """Parse as many complete binary-COPY rows of ``buf`` as there are; return bytes consumed."""
    n = len(buf) // _PG_ROW.itemsize
    if n == 0:
        return 0
    rows = np.frombuffer(memoryview(buf)[: n * _PG_ROW.itemsize], dtype=_PG_ROW)  # a copy-free view
    if np.any(rows["n_fields"] != 3) or np.any(rows["len_rating"] != 8):
        raise DataError("unexpected row layout in PostgreSQL COPY output (NULL or wrong type)")
    cols.extend(rows["user"], rows["movie"], rows["rating"])
    return n * _PG_ROW.itemsize


def parse_copy_stream(chunks: Iterable[bytes | memoryview], cols: _Columns) -> None:
    """Parse a binary ``COPY ... TO STDOUT`` stream of (int4, int4, float8) rows into ``cols``.

    libpq hands over one row per chunk, so chunks are gathered into a buffer of about
    ``COPY_BUFFER`` bytes and parsed with numpy a buffer at a time; chunks may split the header
    and rows anywhere. Memory stays bounded by the buffer plus the arrays.
    """
    buf = bytearray()
    header_done = False
    for chunk in chunks:
        buf += chunk
        if len(buf) < COPY_BUFFER:
            continue
        header_done = header_done or _strip_header(buf)
        if header_done:
            del buf[: _parse_copy_rows(buf, cols)]
    header_done = header_done or _strip_header(buf)
    if header_done:
        del buf[: _parse_copy_rows(buf, cols)]
    if not header_done or bytes(buf) not in (b"", b"\xff\xff"):
        raise DataError(f"truncated PostgreSQL COPY output ({len(buf)} bytes left over)")


def _strip_header(buf: bytearray) -> bool:
    """Remove the binary COPY header from ``buf``; False while it is not complete yet."""
    if len(buf) < _PG_HEADER_LEN:
        return False
    if not buf.startswith(_PG_SIGNATURE):
        raise DataError("PostgreSQL COPY output lacks the binary signature")
    (ext_len,) = struct.unpack(">i", buf[15:19])
    if len(buf) < _PG_HEADER_LEN + ext_len:
        return False
    del buf[: _PG_HEADER_LEN + ext_len]
    return True


def _read_postgres(engine: Engine, capacity: int) -> _Columns:
    """Stream the ratings with binary COPY and parse them chunk by chunk."""
    cols = _Columns(capacity)
    raw = engine.raw_connection()
    try:
        conn: Any = raw.driver_connection
        with conn.cursor() as cur, cur.copy(PG_COPY) as copy:
            parse_copy_stream(copy, cols)
    finally:
        raw.close()
    return cols


def _read_sqlite(engine: Engine, capacity: int) -> _Columns:
    """Stream the ratings through a DB-API cursor, ``FETCH_ROWS`` rows at a time."""
    cols = _Columns(capacity)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(RATINGS_QUERY)
        while rows := cur.fetchmany(FETCH_ROWS):
            block = np.array(rows, dtype=np.float64)  # (chunk, 3); ids are exact in float64
            cols.extend(block[:, 0].astype(np.int64), block[:, 1].astype(np.int64), block[:, 2])
        cur.close()
    finally:
        raw.close()
    return cols


def _iso(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _store_facts(engine: Engine) -> tuple[np.ndarray, int, str | None]:
    """Every movie id (sorted), the number of ratings, the newest rating time."""
    with engine.connect() as conn:
        movie_ids = np.fromiter(
            conn.execute(text("SELECT id FROM movies ORDER BY id")).scalars(), dtype=np.int64
        )
        count, newest = conn.execute(text("SELECT count(*), max(rated_at) FROM ratings")).one()
    return movie_ids, int(count), _iso(newest)


def build_matrix(
    users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, movie_ids: np.ndarray
) -> tuple[sp.csr_matrix, np.ndarray]:
    """CSR (users with a rating x ``movie_ids``) from rating triples, and its user ids."""
    user_ids, rows = np.unique(users, return_inverse=True)
    cols = np.searchsorted(movie_ids, movies)
    if len(movies) and (
        np.any(cols >= len(movie_ids))
        or np.any(movie_ids[np.minimum(cols, len(movie_ids) - 1)] != movies)
    ):
        raise DataError("ratings refer to movies missing from the movies table")
    matrix = sp.csr_matrix(
        (ratings.astype(np.float32), (rows, cols)),
        shape=(len(user_ids), len(movie_ids)),
        dtype=np.float32,
    )
    matrix.sort_indices()
    return matrix, user_ids.astype(np.int64)


def load_ratings(database_url: str) -> RatingsData:
    """Read every rating of the store at ``database_url`` into a :class:`RatingsData`.

    Rows are the users who rated at least once (sorted ids); columns are every movie of the
    ``movies`` table (sorted ids), rated or not, so a model can score the whole catalogue.
    """
    engine = create_engine(database_url)
    try:
        movie_ids, count, newest = _store_facts(engine)
        backend = engine.dialect.name
        if backend == "postgresql":
            cols = _read_postgres(engine, count)
        elif backend == "sqlite":
            cols = _read_sqlite(engine, count)
        else:
            raise DataError(f"unsupported database backend {backend!r} (sqlite or postgresql)")
    finally:
        engine.dispose()
    matrix, user_ids = build_matrix(
        cols.users.array(), cols.movies.array(), cols.ratings.array(), movie_ids
    )
    return RatingsData(matrix, user_ids, movie_ids, newest)


def _held_out_split(m: sp.csr_matrix, held: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split the stored entries of ``m`` by the boolean ``held`` (one flag per entry)."""
    coo = m.tocoo()
    keep = ~held

    def part(sel: np.ndarray) -> sp.csr_matrix:
        out = sp.csr_matrix(
            (coo.data[sel], (coo.row[sel], coo.col[sel])), shape=m.shape, dtype=m.dtype
        )
        out.sort_indices()
        return out

    return part(keep), part(held)


def _check_frac(frac: float) -> None:
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {frac}")


def split_ratings(m: sp.csr_matrix, frac: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Random split of all ratings: ``round(frac * nnz)`` of them held out (protocol a).

    Returns ``(train, held_out)``, both with the shape of ``m``. Same seed, same split.
    """
    _check_frac(frac)
    m = sp.csr_matrix(m)
    m.sort_indices()
    rng = np.random.default_rng(seed)
    n_held = round(frac * m.nnz)
    held = np.zeros(m.nnz, dtype=bool)
    held[rng.permutation(m.nnz)[:n_held]] = True
    return _held_out_split(m, held)


def split_per_user(
    m: sp.csr_matrix, frac: float, seed: int, min_ratings: int = 2
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each user's ratings: ``frac`` of every row held out (protocol b).

    A user with at least ``min_ratings`` ratings keeps ``max(1, round(frac * n))`` of them held
    out, never all of them; users with fewer ratings stay wholly in the training part. Vectorised:
    random keys per entry, ranked within each row. Same seed, same split.
    """
    _check_frac(frac)
    m = sp.csr_matrix(m)
    m.sort_indices()
    counts = np.diff(m.indptr)  # (n_users,)
    rows = np.repeat(np.arange(m.shape[0]), counts)  # (nnz,)
    keys = np.random.default_rng(seed).random(m.nnz)
    order = np.lexsort((keys, rows))  # by row, then random key
    rank = np.empty(m.nnz, dtype=np.int64)
    rank[order] = np.arange(m.nnz) - m.indptr[rows[order]]
    n_held = np.where(counts >= min_ratings, np.maximum(1, np.rint(frac * counts)), 0)
    n_held = np.minimum(n_held, np.maximum(counts - 1, 0)).astype(np.int64)
    if frac == 0.0:
        n_held[:] = 0
    return _held_out_split(m, rank < n_held[rows])


def validation_split(
    m: sp.csr_matrix, frac: float = 0.05, seed: int = 0
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The slice used for early stopping: ``frac`` of each user's ratings (users with >= 5)."""
    return split_per_user(m, frac, seed, min_ratings=5)


def row_entries(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored entries of ``rows`` by index arithmetic on ``indptr``.

    Returns ``(local_row, column, value)``, one element per entry, ``local_row`` counting from 0
    in the order of ``rows``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = m.indptr[rows].astype(np.int64)
    lens = m.indptr[rows + 1].astype(np.int64) - starts  # (B,)
    total = int(lens.sum())
    local_row = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
    first = np.cumsum(lens) - lens  # (B,) where each row starts in the output
    pos = np.arange(total, dtype=np.int64) - np.repeat(first - starts, lens)
    return local_row, m.indices[pos].astype(np.int64), m.data[pos]


def densify(
    m: sp.csr_matrix, rows: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``(B, I)`` ratings and ``(B, I)`` bool mask of the CSR ``rows``, built on ``device``.

    Only the stored entries travel (pinned memory, non-blocking copy on CUDA); the dense batch is
    scattered on the target device. Never touches rows outside ``rows``.
    """
    device = torch.device(device)
    local_row, cols, vals = row_entries(m, rows)
    n_items = m.shape[1]
    flat = torch.from_numpy(local_row * n_items + cols)  # (nnz_B,)
    values = torch.from_numpy(np.ascontiguousarray(vals, dtype=np.float32))  # (nnz_B,)
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
        values = values.pin_memory().to(device, non_blocking=True)
    batch = len(rows)
    dense = torch.zeros(batch * n_items, dtype=torch.float32, device=device)
    mask = torch.zeros(batch * n_items, dtype=torch.bool, device=device)
    dense[flat] = values
    mask[flat] = True
    return dense.view(batch, n_items), mask.view(batch, n_items)


def pack_rows(
    m: sp.csr_matrix, rows: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR ``rows`` as a packed sparse batch on ``device``: (column indices (N,) int64,
    values (N,) float32, offsets (B,) int64 where each row starts), the input of
    ``Autoencoder.loss_sparse`` and ``forward_sparse``; nothing of size (B, I) is built."""
    device = torch.device(device)
    rows = np.asarray(rows, dtype=np.int64)
    _, cols, vals = row_entries(m, rows)
    lens = (m.indptr[rows + 1] - m.indptr[rows]).astype(np.int64)  # (B,)
    offsets = torch.from_numpy(np.cumsum(lens) - lens)
    indices = torch.from_numpy(cols)
    values = torch.from_numpy(np.ascontiguousarray(vals, dtype=np.float32))
    if device.type == "cuda":
        return tuple(  # type: ignore[return-value]
            t.pin_memory().to(device, non_blocking=True) for t in (indices, values, offsets)
        )
    return indices, values, offsets


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``order`` of ``batch_size`` (the last one may be shorter)."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def remap_columns(m: sp.csr_matrix, from_ids: np.ndarray, to_ids: np.ndarray) -> sp.csr_matrix:
    """``m`` with columns labelled ``from_ids`` re-indexed to the vocabulary ``to_ids``.

    Entries of movies absent from ``to_ids`` (added to the store after training) are dropped.
    """
    order = np.argsort(to_ids, kind="stable")
    sorted_ids = np.asarray(to_ids)[order]
    pos = np.searchsorted(sorted_ids, from_ids)
    pos_c = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    known = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == from_ids)
    new_col = np.where(known, order[pos_c], -1)  # (len(from_ids),)
    coo = sp.csr_matrix(m).tocoo()
    cols = new_col[coo.col]
    keep = cols >= 0
    out = sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], cols[keep])),
        shape=(m.shape[0], len(to_ids)),
        dtype=np.float32,
    )
    out.sort_indices()
    return out
