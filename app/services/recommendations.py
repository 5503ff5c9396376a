"""Recommendation use cases: for a stored user, for a visitor, and predicted ratings.

Each call costs one indexed query for the user's ratings (none for a visitor, a raw prepared
statement on a connection of the serving thread: ``RatingsReader``) and a share of one forward
pass over the model held in memory; nothing depends on the number of users.
"""

from __future__ import annotations

import itertools
import math
import sys
from array import array
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from sqlalchemy.orm import Session

from app.repositories import ratings as ratings_repo
from app.repositories import users as users_repo
from app.repositories.ratings import RatingsReader
from app.services.errors import ModelUnavailableError, NotFoundError
from app.serving import MicroBatcher, ResultMemo, ServingState, rank_batch
from ml.scored import Scored

NO_MODEL_DETAIL = (
    "no model is loaded yet: train one with `movierec train` "
    "(or POST /v1/admin/retrain), then retry"
)


# Slotted: answers live on in the result memo, and an instance without a __dict__ is one object
# fewer for the garbage collector to walk (and about half the memory).
@dataclass(frozen=True, slots=True)
class Filters:
    """What a recommendation list may contain."""

    genres: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None
    exclude: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Item:
    movie_id: int
    title: str
    year: int | None
    genres: list[str]
    score: float
    predicted_rating: float | None


@dataclass(frozen=True, slots=True)
class Recommendations:
    model_version: int
    source: str  # "model" or "popular"
    items: list[Item] = field(default_factory=list)


def require_state(state: ServingState | None) -> ServingState:
    """The loaded model, or the 503-style error that says how to get one."""
    if state is None:
        raise ModelUnavailableError(NO_MODEL_DETAIL)
    return state


def _allowed(state: ServingState, filters: Filters) -> np.ndarray:
    """(I,) bool mask of the model columns the list may contain (filters and exclusions)."""
    allowed = state.allowed_columns(filters.genres, filters.year_min, filters.year_max)
    if filters.exclude:
        columns = state.recommender.columns(np.asarray(filters.exclude, dtype=np.int64))
        allowed = allowed.copy()  # the filter's mask is shared (cached): never write to it
        allowed[columns[columns >= 0]] = False
    return allowed


def _items(state: ServingState, scored: Sequence[Scored]) -> list[Item]:
    """The scored movies (``ml.scored.Scored``) with their catalogue facts, as the API shows
    them; a predicted rating of NaN (lists that do not rate) becomes None."""
    catalogue = state.catalogue
    out: list[Item] = []
    for s in scored:
        row = catalogue.row_of.get(int(s.movie_id))
        if row is None:  # a model column no longer in the catalogue: never shown
            continue
        predicted: float | None = s.predicted_rating
        if predicted is not None and math.isnan(predicted):  # e.g. similar movies: no rating
            predicted = None
        out.append(
            Item(
                movie_id=int(s.movie_id),
                title=catalogue.titles[row],
                year=catalogue.year_of(row),
                genres=catalogue.genres[row],
                score=float(s.score),
                predicted_rating=None if predicted is None else float(predicted),
            )
        )
    return out


async def recommend_from_ratings(
    state: ServingState,
    batcher: MicroBatcher,
    ratings: Mapping[int, float],
    n: int,
    offset: int,
    filters: Filters,
) -> Recommendations:
    """Top ``n`` after ``offset`` for a rating row; popular films when the row is empty.

    Rated movies are never returned. The forward pass is shared with the requests of the same
    event-loop turn (``MicroBatcher``).
    """
    allowed = _allowed(state, filters)
    if not ratings:
        scored = list(state.recommender.popular(n + offset, allowed=allowed))[offset:]
        return Recommendations(state.version_id, "popular", _items(state, scored))
    ranked = await batcher.top(state.recommender, ratings, n + offset, allowed)
    return Recommendations(state.version_id, "model", _items(state, ranked[offset:]))


async def recommend_for_user(
    reader: RatingsReader,
    state: ServingState | None,
    batcher: MicroBatcher,
    user_id: int,
    n: int,
    offset: int,
    filters: Filters,
    memo: ResultMemo | None = None,
) -> Recommendations:
    """Recommendations for a stored user (404 when the user does not exist).

    With a ``memo``, an answer computed for the same serving state, parameters and ratings
    (as this request's query read them) is returned again instead of being recomputed.
    """
    rows = await reader.rows_for_user_async(user_id)
    if not rows and not reader.user_exists(user_id):
        raise NotFoundError(f"user {user_id} does not exist", user_id=user_id)
    live = require_state(state)
    if memo is None or memo.size <= 0:
        return await recommend_from_ratings(live, batcher, dict(rows), n, offset, filters)
    key = memo_key(live, n, offset, filters, pack_ratings(rows))
    answer: Recommendations | None = memo.get(live, key)
    if answer is None:
        answer = await recommend_from_ratings(live, batcher, dict(rows), n, offset, filters)
        memo.put(live, key, answer)
    return answer


MemoKey = tuple[int, int, int, Filters, bytes]
CARRY_BATCH = 64  # users scored together when answers are carried over to a new state


def pack_ratings(rows: Iterable[tuple[int, float]]) -> bytes:
    """A user's ``(movie_id, rating)`` rows as the memo's compact key part: 16 bytes a rating
    (both as float64, exact for ids below 2**53 and for any stored rating), where a tuple of
    tuples costs about 120."""
    return array("d", itertools.chain.from_iterable(rows)).tobytes()


def unpack_ratings(packed: bytes) -> dict[int, float]:
    """``pack_ratings`` undone: ``{movie_id: rating}``."""
    values = array("d")
    values.frombytes(packed)
    return {int(movie): rating for movie, rating in zip(values[::2], values[1::2], strict=True)}


def memo_key(
    state: ServingState, n: int, offset: int, filters: Filters, packed_ratings: bytes
) -> MemoKey:
    """The result memo's key of a stored user's request: everything the answer depends on."""
    return (state.version_id, n, offset, filters, packed_ratings)


# What a memo entry costs beyond its ratings, filters and items, in bytes (CPython 3.11+,
# 64-bit): the ordered dict's slot and link, the key's tuple and its integers, the Filters,
# the (answer, cost) pair, the Recommendations and its list. Counted high on purpose; the
# tests check the sum against tracemalloc.
MEMO_ENTRY_OVERHEAD = 720
# One recommended movie: its list slot, the Item and the numbers it owns (the title and the
# genres are the catalogue's, shared).
MEMO_ITEM_BYTES = 208


def memo_entry_bytes(key: Hashable, answer: Any) -> int:
    """What one result-memo entry costs in memory: the ``weigh`` of ``ResultMemo``."""
    _, _, _, filters, packed = cast(MemoKey, key)
    size = MEMO_ENTRY_OVERHEAD + sys.getsizeof(packed)
    if filters.exclude:
        size += sys.getsizeof(filters.exclude) + 32 * len(filters.exclude)
    if filters.genres:
        size += sys.getsizeof(filters.genres) + sum(sys.getsizeof(g) for g in filters.genres)
    return size + MEMO_ITEM_BYTES * len(cast(Recommendations, answer).items)


def carry_memo_over(memo: ResultMemo, state: ServingState, limit: int) -> int:
    """Answer, with ``state`` (a model or catalogue about to be swapped in), the requests of the
    ``limit`` most recently used entries of ``memo``, and ``prepare`` those answers for it.

    A swap starts a new memo: without this, every user's next request after a retrain would be
    computed at once, at the model's cost rather than the memo's. The keys hold the users'
    ratings as their requests read them, so the carried answers are what those requests would
    get from the new state (a user who has rated since gets a new key, hence a computed
    answer). Blocking: runs on the loading thread, in batches of ``CARRY_BATCH`` users.
    Returns the number of answers prepared.
    """
    keys = cast(list[MemoKey], memo.recent(limit))
    if not keys:
        return 0
    results: list[Recommendations | None] = [None] * len(keys)
    todo: list[
        tuple[int, dict[int, float], int, int, np.ndarray]
    ] = []  # (i, ratings, n, offset, allowed)
    for i, (_, n, offset, filters, packed) in enumerate(keys):
        allowed = _allowed(state, filters)
        if packed:
            todo.append((i, unpack_ratings(packed), n, offset, allowed))
            continue
        scored = list(state.recommender.popular(n + offset, allowed=allowed))[offset:]
        results[i] = Recommendations(state.version_id, "popular", _items(state, scored))
    for start in range(0, len(todo), CARRY_BATCH):
        chunk = todo[start : start + CARRY_BATCH]
        ranked = rank_batch(state.recommender, [(r, n + o, a) for _, r, n, o, a in chunk])
        for (i, _, _, offset, _), best in zip(chunk, ranked, strict=True):
            results[i] = Recommendations(state.version_id, "model", _items(state, best[offset:]))
    answers: dict[Hashable, Any] = {
        memo_key(state, n, offset, filters, packed): answer
        for (_, n, offset, filters, packed), answer in zip(keys, results, strict=True)
    }
    memo.prepare(state, answers)
    return len(answers)


async def recommend_for_visitor(
    state: ServingState | None,
    batcher: MicroBatcher,
    ratings: Sequence[tuple[int, float]],
    n: int,
    offset: int,
    filters: Filters,
) -> Recommendations:
    """Fold a visitor's ratings into the model without storing anything."""
    live = require_state(state)
    unknown = live.catalogue.unknown(m for m, _ in ratings)
    if unknown:
        raise NotFoundError(
            f"ratings name movies that are not in the catalogue: {unknown[:20]}",
            movie_ids=unknown[:100],
        )
    return await recommend_from_ratings(live, batcher, dict(ratings), n, offset, filters)


def predict_for_user(
    session: Session, state: ServingState | None, user_id: int, movie_ids: Sequence[int]
) -> tuple[int, dict[int, float | None]]:
    """Predicted ratings of ``movie_ids`` for a stored user: ``(model version, {id: rating})``."""
    ratings = ratings_repo.for_user(session, user_id)
    if not ratings and not users_repo.exists(session, user_id):
        raise NotFoundError(f"user {user_id} does not exist", user_id=user_id)
    live = require_state(state)
    unknown = live.catalogue.unknown(movie_ids)
    if unknown:
        raise NotFoundError(
            f"movie_ids names movies that are not in the catalogue: {unknown[:20]}",
            movie_ids=unknown[:100],
        )
    predicted = live.recommender.predict(ratings, list(movie_ids))
    return live.version_id, {
        m: (None if predicted.get(m) is None else float(predicted[m]))  # type: ignore[arg-type]
        for m in movie_ids
    }


def similar_movies(state: ServingState | None, movie_id: int, n: int) -> Recommendations:
    """Movies most similar to ``movie_id`` by the model's item–item weights."""
    live = require_state(state)
    if movie_id not in live.catalogue.row_of:
        raise NotFoundError(f"movie {movie_id} does not exist", movie_id=movie_id)
    in_model = bool(np.any(np.asarray(live.recommender.movie_ids) == movie_id))
    if not in_model:
        return Recommendations(live.version_id, "model", [])
    scored = live.recommender.similar(movie_id, n)
    return Recommendations(live.version_id, "model", _items(state=live, scored=scored))
