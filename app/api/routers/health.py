"""Liveness, readiness, Prometheus metrics and the HTTP-stack baseline ``/v1/ping``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import is_admin
from app.api.schemas.health import Health, Ping, Readiness
from app.repositories import jobs as jobs_repo
from app.services import jobs as jobs_service

router = APIRouter(tags=["health"])
DB_CHECK_TIMEOUT = 3.0


def _check_database(request: Request) -> None:
    with request.app.state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def database_status(request: Request) -> dict[str, object]:
    """``{"ok": True}`` or ``{"ok": False, "error": ...}`` from a ``SELECT 1`` in a thread."""
    try:
        await asyncio.wait_for(asyncio.to_thread(_check_database, request), DB_CHECK_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {DB_CHECK_TIMEOUT:.0f} s"}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    return {"ok": True}


def _worker_status(request: Request) -> dict[str, object]:
    """``jobs_service.worker_summary``, or the error that prevented reading it."""
    state = request.app.state
    try:
        with state.sessions() as session:
            return jobs_service.worker_summary(session, state.settings.heartbeat_timeout_seconds)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


HIDDEN = "details (they name hosts and paths) are shown with the admin token"


@router.get(
    "/readyz",
    summary="Database reachable and a model loaded",
    description="Open to all. The errors' details, which name the database host and checkpoint "
    "paths, are given only to a request with the admin token "
    "(`Authorization: Bearer $MOVIEREC_ADMIN_TOKEN`).",
    responses={503: {"model": Readiness, "description": "A part is not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    database = await database_status(request)
    model = request.app.state.holder.readiness()
    if not is_admin(request):
        if "error" in database:
            database["error"] = f"unreachable; {HIDDEN}"
        if "last_failure" in model:
            model["last_failure"]["error"] = f"failed to load; {HIDDEN}"
    if not model["loaded"]:
        model["error"] = "no model loaded: run `movierec train` (or POST /v1/admin/retrain)"
    # The training workers are shown, not required: the API answers without them.
    worker = await asyncio.to_thread(_worker_status, request) if database["ok"] else {}
    ready = bool(database["ok"]) and bool(model["loaded"])
    body = Readiness(
        status="ready" if ready else "not ready", database=database, model=model, worker=worker
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    state.metrics.memo_entries.set(len(state.memo))
    state.metrics.memo_bytes.set(state.memo.bytes)
    try:
        with state.sessions() as session:
            counts = jobs_repo.counts_by_status(session)
            workers = jobs_service.worker_summary(session, state.settings.heartbeat_timeout_seconds)
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            state.metrics.jobs.labels(status).set(counts.get(status, 0))
        state.metrics.workers.labels("busy").set(workers["busy"])
        state.metrics.workers.labels("idle").set(workers["alive"] - workers["busy"])
        state.metrics.worker_restarts.set(workers["restarts"])
    except Exception:  # the database being down must not hide the other metrics
        pass
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/ping", summary="Constant answer: the HTTP stack's own cost")
async def ping() -> Ping:
    return Ping(ping="pong")
