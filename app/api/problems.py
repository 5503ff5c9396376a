"""``application/problem+json`` (RFC 9457) for every error the API returns.

Service errors, FastAPI's validation errors, unknown routes (404), wrong methods (405) and an
unreachable database (503) all answer with ``type``, ``title``, ``status`` and a ``detail`` that
names the offending field or id.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.observability import request_id_var
from app.services.errors import (
    AdminDisabledError,
    CheckpointRefusedError,
    ConflictError,
    InvalidInputError,
    ModelUnavailableError,
    NotAuthenticatedError,
    NotFoundError,
    NotStoredError,
    ServiceError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://movierec.dev/problems/"
log = logging.getLogger("movierec.api")

SERVICE_STATUS: dict[type[ServiceError], int] = {
    NotFoundError: 404,
    InvalidInputError: 422,
    ConflictError: 409,
    ModelUnavailableError: 503,
    NotStoredError: 503,
    CheckpointRefusedError: 409,
    NotAuthenticatedError: 401,
    AdminDisabledError: 403,
}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    """A problem+json response; ``extra`` members are added beside the standard ones."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def _service_status(exc: ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in SERVICE_STATUS:
            return SERVICE_STATUS[cls]
    return 400


async def service_error_handler(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ServiceError)
    status = _service_status(exc)
    slug = type(exc).__name__.removesuffix("Error").lower()
    headers = {"Retry-After": "5"} if status == 503 else None
    extra = dict(exc.extra)
    if status == 401:
        realm = "movierec" if extra.pop("realm", None) == "api" else "movierec admin"
        headers = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
    return problem(
        status, exc.detail, title=exc.title, type_=TYPE_BASE + slug, headers=headers, **extra
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def validation_error_handler(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _location(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(
        422, detail, title="Invalid request", type_=TYPE_BASE + "validation", errors=errors
    )


async def http_error_handler(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        if detail == "Method Not Allowed":
            detail = f"method {request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:  # every route of the path, not only the first one the router tried
            headers["Allow"] = ", ".join(allowed)
    return problem(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route whose path matches the request's (Starlette's own 405
    names only the first such route's)."""
    methods: set[str] = set()
    todo = list(request.app.router.routes)
    while todo:
        route = todo.pop()
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner:  # an included router: its routes carry their full paths
            todo.extend(inner)
            continue
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(route_methods)
    return sorted(methods)


async def integrity_error_handler(_: Request, exc: Exception) -> ProblemResponse:
    log.warning("integrity error: %s", exc)
    return problem(409, "the request conflicts with data stored meanwhile; retry it")


async def data_error_handler(_: Request, exc: Exception) -> ProblemResponse:
    log.warning("data error: %s", exc)
    return problem(422, "a value in the request is out of the range the store accepts")


async def database_error_handler(_: Request, exc: Exception) -> ProblemResponse:
    """An unreachable or failing database: 503 with a retry hint, never a bare 500."""
    log.error("database error: %s", exc)
    return problem(
        503,
        "the database is unavailable; retry shortly",
        title="Database unavailable",
        type_=TYPE_BASE + "database-unavailable",
        headers={"Retry-After": "5"},
    )


def install(app: FastAPI) -> None:
    """Register every problem+json handler on the app."""
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(IntegrityError, integrity_error_handler)
    app.add_exception_handler(DataError, data_error_handler)
    app.add_exception_handler(OperationalError, database_error_handler)
    app.add_exception_handler(InterfaceError, database_error_handler)
    app.add_exception_handler(PoolTimeoutError, database_error_handler)
