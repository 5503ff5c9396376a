"""The FastAPI application: ``create_app(settings)`` and its lifespan.

The lifespan opens the engine, loads the catalogue and the active model once (on
``settings.device``), then starts the background task that watches for a new active version.
Routers live in ``app.api.routers``; nothing else happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import sessionmaker

from app.api import docs, openapi, problems
from app.api.hot import HotRecommendations
from app.api.routers import admin, health, movies, recommendations, users
from app.config import Settings, get_settings
from app.db.session import make_engine
from app.observability import Metrics, ObservabilityMiddleware, configure_logging
from app.services import recommendations as rec_service
from app.serving import (
    Loader,
    MicroBatcher,
    ModelHolder,
    ResultMemo,
    ServingState,
    load_checkpoint,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("movierec.app")
POOL_SIZE = 16


def _limit_torch_threads() -> None:
    """One intra-op thread per API process: batch-1 forward passes gain nothing from more,
    and extra threads contend with the event loop (measured in the serving notes)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _freeze_startup_objects() -> None:
    """Move every object alive at start (the modules of torch, numpy, SQLAlchemy, FastAPI and
    this package: some 250,000 objects) out of the cyclic garbage collector's reach.

    A full collection walks every tracked object: 126-195 ms measured for an API process on
    a 2-core host, a pause every request in flight waits for. Requests leave few survivors, but
    the result memo's entries do, and they trigger such a collection every few hundred answers
    stored; with the start-up objects frozen, it walks only what was created since. The
    model's loading module is imported first (its imports are start-up objects too); the model
    itself is loaded after the freeze, so that a model swapped out is collected as usual. The
    lifespan's end unfreezes them (for a process that goes on, as the tests' does).
    """
    with contextlib.suppress(ImportError):  # torch is a dependency; the loader imports it
        importlib.import_module("ml.inference")
    gc.collect()
    gc.freeze()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    holder: ModelHolder = app.state.holder
    _freeze_startup_objects()
    try:
        await holder.refresh_async()
    except Exception as exc:  # the database may be down at start: /readyz says so
        log.warning("initial model load skipped: %s", exc)
    watcher = asyncio.create_task(holder.watch(settings.model_poll_seconds), name="model-watch")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        app.state.engine.dispose()
        gc.unfreeze()


def _memo_carrier(memo: ResultMemo, limit: int) -> Callable[[ServingState], None] | None:
    """What the model holder runs before a swap: the memo's recent answers, computed with the
    new state (``carry_memo_over``), timed in the log. None when nothing is to be carried."""
    if limit <= 0:
        return None

    def carry(state: ServingState) -> None:
        start = time.perf_counter()
        count = rec_service.carry_memo_over(memo, state, limit)
        log.info(
            "%d recent answers computed with model version %d before the swap, in %.2f s",
            count,
            state.version_id,
            time.perf_counter() - start,
        )

    return carry


def _mount_page(app: FastAPI) -> None:
    """Serve the browser page from ``app/static`` when it is there."""
    if not STATIC_DIR.is_dir():
        return
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html")


def create_app(settings: Settings | None = None, *, loader: Loader = load_checkpoint) -> FastAPI:
    """Build the application for ``settings`` (the environment's when omitted)."""
    settings = settings or get_settings()
    settings.check_can_serve()
    configure_logging(settings.log_level, settings.log_json)
    _limit_torch_threads()
    app = FastAPI(
        title="movierec",
        version="0.1.0",
        summary="Movie recommendations from a stacked autoencoder.",
        lifespan=lifespan,
        docs_url=None,  # served by app.api.docs, without a CDN
        redoc_url=None,
    )
    # Requests awaiting a shared forward pass each hold a connection: a pool large enough for
    # a full batch avoids opening and closing overflow connections under load.
    engine = make_engine(settings.database_url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
    metrics = Metrics()
    app.state.settings = settings
    app.state.api_keys = settings.api_key_list()
    app.state.engine = engine
    app.state.sessions = sessionmaker(bind=engine, expire_on_commit=False)
    app.state.metrics = metrics
    app.state.batcher = MicroBatcher(
        observe=metrics.batch_size.observe, threaded=settings.scoring_thread
    )
    memo_hit = metrics.memo_lookups.labels("hit").inc
    memo_miss = metrics.memo_lookups.labels("miss").inc
    memo = ResultMemo(
        settings.result_memo_size,
        on_lookup=lambda hit: memo_hit() if hit else memo_miss(),
        max_bytes=settings.result_memo_bytes,
        weigh=rec_service.memo_entry_bytes,
    )
    app.state.memo = memo
    app.state.holder = ModelHolder(
        engine,
        device=settings.device,
        metrics=metrics,
        loader=loader,
        prepare=_memo_carrier(memo, min(settings.result_memo_carry, settings.result_memo_size)),
    )
    problems.install(app)
    openapi.install(app)
    for module in (health, movies, users, recommendations, admin):
        app.include_router(module.router)
    docs.install(app)
    _mount_page(app)
    # Inside the observability layer (request ids, metrics, access log), above the routing.
    app.add_middleware(HotRecommendations, api=app)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        routes=app.router.routes,
    )
    return app
