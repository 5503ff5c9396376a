"""The hot-swappable model of one API process.

``ModelHolder.state`` is one immutable ``ServingState`` (recommender + catalogue + the column
maps between them). A background task polls the active version and the movies table; a new
version is loaded completely in a thread, off the event loop, then the reference is replaced in
one assignment. Requests in flight keep the object they started with, so a swap never mixes two
models in one answer. A version that fails to load is marked failed in the registry, the
previous version stays active and serving, and the failure is reported by ``/readyz`` and the
metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from app.observability import Metrics
from app.repositories import model_versions as versions_repo
from app.repositories import movies as movies_repo
from app.repositories.ratings import RatingsReader
from app.services import registry
from app.services.catalogue import Catalogue
from ml.scored import Scored

log = logging.getLogger("movierec.serving")
MASK_CACHE = 256  # filter masks kept per serving state
_SERIALS = itertools.count(1)  # ServingState.serial: later states, larger numbers


class RecommenderLike(Protocol):
    """The part of ``ml.inference.Recommender`` the service uses."""

    movie_ids: np.ndarray
    version_name: str

    def recommend(
        self,
        ratings: Mapping[int, float],
        n: int,
        offset: int = 0,
        exclude: Iterable[int] = (),
        allowed: np.ndarray | None = None,
    ) -> Sequence[Scored]: ...

    def predict(
        self, ratings: Mapping[int, float], movie_ids: Sequence[int]
    ) -> Mapping[int, float | None]: ...

    def similar(self, movie_id: int, n: int) -> Sequence[Scored]: ...

    def popular(self, n: int, allowed: np.ndarray | None = None) -> Sequence[Scored]: ...

    def columns(self, movie_ids: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def score_matrix(self, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]: ...

    def top_k_rows(
        self,
        rows: Sequence[tuple[np.ndarray, np.ndarray]],
        ks: Sequence[int],
        allowed: Sequence[np.ndarray],
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...


Loader = Callable[[str, str], RecommenderLike]


def load_checkpoint(path: str, device: str) -> RecommenderLike:
    """Load and verify a checkpoint with ``ml.inference`` (imported here: torch loads lazily).

    ``precision="auto"``: for large catalogues on a CPU, a float16 ranking head (or bfloat16
    weights) where this CPU computes it faster (measured at load), float32 otherwise.
    """
    from ml.inference import Recommender

    recommender = Recommender.from_checkpoint(path, device=device, precision="auto")
    return cast(RecommenderLike, recommender)


@dataclass(frozen=True)
class ServingState:
    """Everything one recommendation needs, swapped as a whole."""

    version_id: int
    recommender: RecommenderLike
    catalogue: Catalogue
    column_rows: np.ndarray  # (I,) catalogue row of each model column, -1 when not catalogued
    in_catalogue: np.ndarray  # (I,) bool
    # Built later = larger: a request that started before a swap is told from one after it.
    serial: int = field(default_factory=lambda: next(_SERIALS), compare=False)
    # Masks of the filters asked for lately, by (genres, year_min, year_max): read-only arrays.
    _masks: dict[tuple[tuple[str, ...], int | None, int | None], np.ndarray] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(
        cls, version_id: int, recommender: RecommenderLike, catalogue: Catalogue
    ) -> ServingState:
        """Map the model's columns to catalogue rows (-1 for movies no longer catalogued)."""
        columns = np.asarray(recommender.movie_ids, dtype=np.int64)
        rows = np.searchsorted(catalogue.ids, columns)
        rows = np.clip(rows, 0, max(len(catalogue.ids) - 1, 0))
        found = (
            catalogue.ids[rows] == columns if len(catalogue.ids) else np.zeros(len(columns), bool)
        )
        return cls(
            version_id=version_id,
            recommender=recommender,
            catalogue=catalogue,
            column_rows=np.where(found, rows, -1),
            in_catalogue=found,
        )

    def allowed_columns(
        self,
        genres: Sequence[str],
        year_min: int | None,
        year_max: int | None,
    ) -> np.ndarray:
        """(I,) bool over the model's columns: catalogued movies that pass the filters.

        Read-only and cached per filter (at most ``MASK_CACHE`` of them): the lists of a
        site ask for the same few filters again and again.
        """
        key = (tuple(genres), year_min, year_max)
        cached = self._masks.get(key)
        if cached is not None:
            return cached
        mask = self.catalogue.filter_mask(genres, year_min, year_max)
        allowed = (
            self.in_catalogue
            if mask is None
            else self.in_catalogue & mask[np.maximum(self.column_rows, 0)]
        )
        allowed.setflags(write=False)
        if len(self._masks) >= MASK_CACHE:
            self._masks.clear()
        self._masks[key] = allowed
        return allowed


class ResultMemo:
    """Exact answers of recent recommendation requests, bounded in entries and in bytes
    (least recently used out).

    A key holds everything an answer depends on: the serving state (model version and
    catalogue: a swap starts a new memo), the request's parameters and the user's ratings
    *as read by that request's query* — a rating written a moment ago changes the key, so a
    stale answer is never served. ``get`` and ``put`` run on the event loop's thread only (no
    locking); a request still on a state older than the memo's is a miss and stores nothing.

    ``weigh(key, answer)`` is what an entry costs in bytes (its key, its answer and the memo's
    own bookkeeping); the entries together never cost more than ``max_bytes``, and an entry
    that alone would is not stored. Without ``weigh`` only the number of entries is bounded.

    Before a swap, the thread that loads the new state may ``prepare`` answers for it
    (computed for the keys of ``recent``): the first request on the new state finds them in
    place of an empty memo.
    """

    def __init__(
        self,
        size: int,
        on_lookup: Callable[[bool], None] | None = None,
        *,
        max_bytes: int | None = None,
        weigh: Callable[[Hashable, Any], int] | None = None,
    ) -> None:
        self.size = size if max_bytes is None or max_bytes > 0 else 0
        self.max_bytes = max_bytes
        self._weigh = weigh
        self._state: ServingState | None = None
        # key -> (answer, its cost in bytes)
        self._answers: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._prepared: tuple[ServingState, dict[Hashable, Any]] | None = None
        self.bytes = 0  # what the entries held cost, as ``weigh`` counts them
        self.hits = 0
        self.misses = 0
        self._on_lookup = on_lookup  # told True for a hit, False for a miss (metrics)

    def __len__(self) -> int:
        return len(self._answers)

    def recent(self, limit: int) -> list[Hashable]:
        """Up to ``limit`` keys, most recently used last (safe from any thread: one C-level
        copy of the keys under the GIL; an empty list if the memo changed meanwhile)."""
        if limit <= 0:
            return []
        try:
            keys = list(self._answers)
        except RuntimeError:  # mutated during the copy
            return []
        return keys[-limit:]

    def prepare(self, state: ServingState, answers: dict[Hashable, Any]) -> None:
        """Answers for ``state``, a serving state about to be swapped in (any thread; one
        assignment): adopted, least recently used first, by the first request on it."""
        self._prepared = (state, answers)

    def _follow(self, state: ServingState) -> bool:
        """Whether a request on ``state`` may use the memo: ``state`` is the memo's, or a newer
        one (the memo then switches to it, with the answers prepared for it); not an older one."""
        current = self._state
        if state is current:
            return True
        if current is not None and state.serial < current.serial:
            return False
        prepared = self._prepared
        self._answers = OrderedDict()
        self.bytes = 0
        if prepared is not None and prepared[0] is state:
            for key, answer in prepared[1].items():
                self._store(key, answer)
        if prepared is not None and prepared[0].serial <= state.serial:
            self._prepared = None
        self._state = state
        return True

    def _store(self, key: Hashable, answer: Any) -> None:
        """Hold ``answer`` as the most recent entry; the least recent ones out over a bound."""
        cost = self._weigh(key, answer) if self._weigh is not None else 0
        if self.max_bytes is not None and cost > self.max_bytes:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._answers[key] = (answer, cost)
        self.bytes += cost
        while len(self._answers) > self.size or (
            self.max_bytes is not None and self.bytes > self.max_bytes
        ):
            _, (_, freed) = self._answers.popitem(last=False)
            self.bytes -= freed

    def get(self, state: ServingState, key: Hashable) -> Any | None:
        entry = self._answers.get(key) if self._follow(state) else None
        if entry is None:
            self.misses += 1
        else:
            self._answers.move_to_end(key)
            self.hits += 1
        if self._on_lookup is not None:
            self._on_lookup(entry is not None)
        return None if entry is None else entry[0]

    def put(self, state: ServingState, key: Hashable, answer: Any) -> None:
        if self.size <= 0 or not self._follow(state):
            return
        self._store(key, answer)


@dataclass
class _Request:
    ratings: Mapping[int, float]
    k: int  # how many of the best to return (n + offset)
    allowed: np.ndarray  # (I,) bool
    future: asyncio.Future[list[Scored]]


def rank_batch(
    recommender: RecommenderLike, requests: Sequence[tuple[Mapping[int, float], int, np.ndarray]]
) -> list[list[Scored]]:
    """Score many users in one forward pass; the best ``k`` allowed, unrated movies of each.

    ``requests`` are ``(ratings, k, allowed)``: the user's ``{movie_id: rating}``, how many to
    return and an (I,) bool mask over the model's columns. Rated movies are never returned;
    rated movies the model does not know are left out of its input.
    """
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for ratings, _, _ in requests:
        ids = np.fromiter(ratings.keys(), dtype=np.int64, count=len(ratings))
        vals = np.fromiter(ratings.values(), dtype=np.float32, count=len(ratings))
        cols = recommender.columns(ids) if len(ids) else np.empty(0, np.int64)
        known = cols >= 0
        rows.append((cols[known], vals[known]))
    tops = recommender.top_k_rows(rows, [k for _, k, _ in requests], [a for _, _, a in requests])
    return [
        [
            Scored(m, s, p)
            for m, s, p in zip(ids.tolist(), scores.tolist(), preds.tolist(), strict=True)
        ]
        for ids, scores, preds in tops
    ]


class MicroBatcher:
    """Scores concurrent recommendation requests together, one forward pass per batch.

    A request waits for no timer: a batch is started a few event-loop iterations after its
    first request (``hops``), once the requests already read from the sockets have been parsed
    and have queued themselves. The pass itself runs on one dedicated scoring thread (torch
    releases the GIL, with one intra-op thread), so the event loop keeps parsing requests and
    reading ratings meanwhile; the requests that arrive during a pass form the next batch.
    One batch is in flight at a time: alone, a request is a batch of one; under load, batches
    grow by themselves (per-user cost falls several-fold, see the serving notes).
    With ``threaded=False`` (the API's default, ``MOVIEREC_SCORING_THREAD``) the pass runs on
    the event loop's thread: the requests that arrive meanwhile wait in the sockets and are
    parsed as one batch afterwards. Measured on a 2-core host under ``wrk -c8``, that gives
    full batches (mean 7.9 of 8) and less CPU per request than the scoring thread, whose
    batches came out at 2.5-7 requests with GIL hand-offs between them.
    """

    def __init__(
        self,
        max_batch: int = 64,
        observe: Callable[[int], None] | None = None,
        hops: int = 3,
        threaded: bool = True,
    ) -> None:
        self.max_batch = max_batch
        self.hops = hops
        self.observe = observe  # called with each batch's size (a metrics histogram)
        self._pending: dict[int, tuple[RecommenderLike, list[_Request]]] = {}
        self._scheduled = False
        self._busy = False  # a batch is being scored on the scoring thread
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="movierec-scoring")
            if threaded
            else None
        )
        self.batches = 0
        self.requests = 0

    async def top(
        self,
        recommender: RecommenderLike,
        ratings: Mapping[int, float],
        k: int,
        allowed: np.ndarray,
    ) -> list[Scored]:
        loop = asyncio.get_running_loop()
        request = _Request(ratings, k, allowed, loop.create_future())
        key = id(recommender)
        if key not in self._pending:
            self._pending[key] = (recommender, [])
        self._pending[key][1].append(request)
        self._schedule(loop)
        return await request.future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and not self._busy and self._pending:
            self._scheduled = True
            loop.call_soon(self._tick, loop, self.hops)

    def _tick(self, loop: asyncio.AbstractEventLoop, hops: int) -> None:
        """Wait ``hops`` loop iterations (each polls the sockets) before flushing, so requests
        already received but not yet parsed join this batch; costs microseconds when idle."""
        if hops > 0:
            loop.call_soon(self._tick, loop, hops - 1)
        else:
            self._scheduled = False
            self._flush(loop)

    def _take_batch(self) -> tuple[RecommenderLike, list[_Request]] | None:
        """Up to ``max_batch`` pending requests of one model (the rest wait for the next)."""
        for key, (recommender, requests) in list(self._pending.items()):
            chunk, rest = requests[: self.max_batch], requests[self.max_batch :]
            if rest:
                self._pending[key] = (recommender, rest)
            else:
                del self._pending[key]
            if chunk:
                return recommender, chunk
        return None

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        taken = self._take_batch()
        if taken is None:
            return
        recommender, chunk = taken
        self.batches += 1
        self.requests += len(chunk)
        if self.observe is not None:
            self.observe(len(chunk))
        work = [(r.ratings, r.k, r.allowed) for r in chunk]
        if self._executor is None:
            try:
                results = rank_batch(recommender, work)
            except Exception as exc:
                _fail(chunk, exc)
            else:
                _deliver(chunk, results)
            self._schedule(loop)
            return
        self._busy = True
        future = loop.run_in_executor(self._executor, rank_batch, recommender, work)
        future.add_done_callback(lambda done: self._finished(loop, chunk, done))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        chunk: list[_Request],
        done: asyncio.Future[list[list[Scored]]],
    ) -> None:
        """Back on the event loop: answer the batch, start the next one if requests wait."""
        self._busy = False
        if done.cancelled():
            _fail(chunk, asyncio.CancelledError())
        elif done.exception() is not None:
            _fail(chunk, cast(BaseException, done.exception()))
        else:
            _deliver(chunk, done.result())
        if self._pending:  # arrived during the pass: already parsed, no need to wait hops
            self._flush(loop)

    def close(self) -> None:
        """Stop the scoring thread (after the requests in flight)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _deliver(chunk: Sequence[_Request], results: Sequence[list[Scored]]) -> None:
    for r, result in zip(chunk, results, strict=True):
        if not r.future.done():
            r.future.set_result(result)


def _fail(chunk: Sequence[_Request], exc: BaseException) -> None:
    for r in chunk:
        if not r.future.done():
            r.future.set_exception(exc)


@dataclass
class LoadReport:
    """The last load failure of this process, for ``/readyz`` and the logs."""

    version_id: int
    error: str
    # The activation that failed: a later activation of the same version is tried again.
    activated_at: datetime | None = None


class ModelHolder:
    """Holds the current ``ServingState`` of this process and keeps it up to date."""

    def __init__(
        self,
        engine: Engine,
        *,
        device: str,
        metrics: Metrics,
        loader: Loader = load_checkpoint,
        prepare: Callable[[ServingState], None] | None = None,
    ) -> None:
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        # Called with each new state before it is swapped in, on the loading thread (the
        # API: the result memo's recent answers computed for it); failures are logged only.
        self.prepare = prepare
        self.ratings = RatingsReader(engine)  # the hot path's query, one connection per thread
        self.device = device
        self.metrics = metrics
        self.loader = loader
        self.state: ServingState | None = None
        self.catalogue: Catalogue | None = None
        self.last_failure: LoadReport | None = None
        self._lock = asyncio.Lock()

    # -- the one blocking refresh, run in a thread -------------------------------------------
    def refresh(self) -> None:
        """Bring catalogue and model up to date with the store (blocking: call it in a thread).

        Raises database errors to the caller; model load errors are handled here.
        """
        with self._sessions() as session:
            pointer = versions_repo.active_pointer(session)
            signature = movies_repo.signature(session)
        current = self.state
        catalogue = self.catalogue
        if catalogue is None or catalogue.signature != signature:
            with self._sessions() as session:
                catalogue = Catalogue.load(session)
            self.catalogue = catalogue
            log.info("catalogue loaded: %d movies", len(catalogue))
            if current is not None:  # same model, new catalogue arrays
                state = ServingState.build(current.version_id, current.recommender, catalogue)
                self._prepare(state)
                self.state = state
        if pointer is None or (current is not None and pointer[0] == current.version_id):
            return
        version_id, path, activated_at = pointer
        failure = self.last_failure
        if (
            failure is not None
            and failure.version_id == version_id
            and failure.activated_at == activated_at
        ):
            return
        self._swap_in(version_id, path, activated_at)

    def _swap_in(self, version_id: int, path: str, activated_at: datetime | None = None) -> None:
        try:
            recommender = self.loader(path, self.device)
        except Exception as exc:
            self._report_failure(version_id, exc, activated_at)
            return
        with self._sessions() as session:
            catalogue = Catalogue.load(session)
        self.catalogue = catalogue
        state = ServingState.build(version_id, recommender, catalogue)
        self._prepare(state)
        self.state = state
        self.last_failure = None
        self.metrics.model_version.set(version_id)
        self.metrics.model_loaded.set(1)
        self.metrics.model_swaps.inc()
        log.info(
            "model version %d is serving (%s, %s weights)",
            version_id,
            path,
            getattr(recommender, "precision", "float32"),
            extra={"version": version_id},
        )

    def _prepare(self, state: ServingState) -> None:
        if self.prepare is None or self.state is None:  # nothing served yet: nothing to carry
            return
        try:
            self.prepare(state)
        except Exception as exc:  # the swap goes ahead; its first requests are computed
            log.warning("preparing answers for the new serving state failed: %s", exc)

    def _report_failure(
        self, version_id: int, exc: Exception, activated_at: datetime | None = None
    ) -> None:
        """Log, count and record a failed load; mark the version failed, keep the old one.

        The failure becomes visible (``last_failure``, ``/readyz``) only once the store's mark
        is committed (or could not be), so whoever sees it finds the version failed there too.
        """
        reason = f"{type(exc).__name__}: {exc}"
        log.error("model version %d failed to load: %s", version_id, reason)
        self.metrics.model_load_failures.inc()
        previous = self.state.version_id if self.state is not None else None
        try:
            with self._sessions() as session, session.begin():
                registry.mark_failed(session, version_id, f"failed to load: {reason}"[:2000])
                if previous is not None:
                    registry.activate(session, previous)
        finally:
            self.last_failure = LoadReport(version_id, reason, activated_at)

    # -- the async side ------------------------------------------------------------------------
    async def refresh_async(self) -> None:
        """Run one refresh in a thread; overlapping calls wait for the one in progress."""
        async with self._lock:
            await asyncio.to_thread(self.refresh)

    async def watch(self, interval: float) -> None:
        """Poll forever; database errors are logged and retried at the next tick."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_async()
            except Exception as exc:
                log.warning("model watch failed: %s", exc)

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` says about the model."""
        report: dict[str, Any] = {
            "loaded": self.state is not None,
            "version": self.state.version_id if self.state is not None else None,
        }
        if self.state is not None:
            device = getattr(self.state.recommender, "device", None)
            report["device"] = str(device) if device is not None else None
            # float32, or what precision="auto" chose at load for a large catalogue
            report["precision"] = getattr(self.state.recommender, "precision", "float32")
        if self.last_failure is not None:
            report["last_failure"] = {
                "version": self.last_failure.version_id,
                "error": self.last_failure.error,
            }
        return report
