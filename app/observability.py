"""Observability: Prometheus metrics, structured logs with a request id, and the ASGI middleware.

The middleware is pure ASGI (no ``BaseHTTPMiddleware``): it tags each request with an id
(``X-Request-ID`` echoed or generated), refuses bodies over the configured size with 413,
times the request and counts it per route template and status, and writes one access log line.
Metrics live in a registry per app, so tests can build many apps in one process; one API process
per replica (or per container) keeps the figures exact without multiprocess mode.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Mount

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
log = logging.getLogger("movierec.http")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The service's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "movierec_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "movierec_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_version = Gauge(
            "movierec_model_version",
            "Id of the model version this process serves (0 when none is loaded).",
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "movierec_model_loaded", "1 when a model is loaded and serving.", registry=self.registry
        )
        self.model_load_failures = Counter(
            "movierec_model_load_failures_total",
            "Model versions that failed to load in this process.",
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "movierec_model_swaps_total", "Model versions swapped in.", registry=self.registry
        )
        self.recommendations = Counter(
            "movierec_recommendations_total",
            "Recommendation lists served, by source (model, popular).",
            ["source"],
            registry=self.registry,
        )
        self.memo_lookups = Counter(
            "movierec_result_memo_lookups_total",
            "Lookups of stored users' recommendation answers in the result memo, by result "
            "(hit, miss).",
            ["result"],
            registry=self.registry,
        )
        self.memo_entries = Gauge(
            "movierec_result_memo_entries",
            "Answers held in this process's result memo (refreshed when metrics are scraped).",
            registry=self.registry,
        )
        self.memo_bytes = Gauge(
            "movierec_result_memo_bytes",
            "Bytes held by this process's result memo, as it counts them (refreshed when metrics "
            "are scraped); at most MOVIEREC_RESULT_MEMO_BYTES.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "movierec_forward_batch_size",
            "Recommendation requests scored together in one forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.jobs = Gauge(
            "movierec_training_jobs",
            "Training jobs by status (refreshed when metrics are scraped).",
            ["status"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "movierec_training_workers",
            "Training workers with a fresh heartbeat, by state (idle, busy; refreshed when "
            "metrics are scraped).",
            ["state"],
            registry=self.registry,
        )
        self.worker_restarts = Gauge(
            "movierec_training_worker_restarts",
            "Restarts by `movierec serve` of the newest live training worker (refreshed when "
            "metrics are scraped).",
            registry=self.registry,
        )


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and extra fields."""

    EXTRA_KEYS = ("method", "path", "route", "status", "duration_ms", "version", "job_id")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in self.EXTRA_KEYS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str, as_json: bool) -> None:
    """Configure the root logger once: JSON lines or a readable text format, with request ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_movierec", False)]:
        root.removeHandler(old)
    handler._movierec = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())


def _request_headers(scope: Scope) -> tuple[bytes | None, bytes | None, bool]:
    """``X-Request-ID``, ``Content-Length`` and whether a chunked body is announced, in one
    pass over the headers."""
    request_id = length = None
    chunked = False
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            request_id = bytes(value)
        elif key == b"content-length":
            length = bytes(value)
        elif key == b"transfer-encoding":
            chunked = True
    return request_id, length, chunked


_ID_PREFIX = secrets.token_hex(6)  # this process's part of every generated request id
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes (random per-process prefix + counter): cheaper
    than a uuid4 per request, and as unique for tracing."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):020x}"  # 32 hex digits, as a uuid


class RouteTemplates:
    """The path template of the route that answered a request, for the metrics' labels.

    FastAPI's own routes put themselves in the scope (``scope["route"]``). Starlette's routes
    (``/openapi.json``) and mounts (``/static``) only leave their endpoint
    (``scope["endpoint"]``), which is looked up here among the app's routes: ``/openapi.json``,
    ``/static/{path}``. A request no route matched is "unmatched" (a 404), which keeps unknown
    paths out of the labels.
    """

    def __init__(self, routes: Sequence[Any]) -> None:
        self.routes = routes  # the app's live list: routes added after start-up are found too
        self._by_endpoint: dict[int, str] = {}
        self._seen = -1

    def _index(self) -> None:
        self._by_endpoint = {}
        for route in self.routes:
            path = getattr(route, "path", None)
            if not path:
                continue
            if isinstance(route, Mount):
                self._by_endpoint.setdefault(id(route.app), f"{path}/{{path}}")
            elif (endpoint := getattr(route, "endpoint", None)) is not None:
                self._by_endpoint.setdefault(id(endpoint), str(path))
        self._seen = len(self.routes)

    def __call__(self, scope: Scope) -> str:
        path = getattr(scope.get("route"), "path", None)
        if path:
            return str(path)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        if self._seen != len(self.routes):
            self._index()
        return self._by_endpoint.get(id(endpoint), "unmatched")


# Security headers of every response: never sniffed, never framed, no referrer passed on, and a
# Content-Security-Policy per kind of answer. The page loads its own module scripts and styles
# (no inline script, nothing from elsewhere); /docs and /redoc (app.api.docs) load Swagger UI and
# ReDoc from the app too, but both set inline styles and ReDoc runs its search in a worker made
# from a blob; API answers load nothing.
_COMMON_SECURITY = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_HEADERS = (*_COMMON_SECURITY, (b"content-security-policy", PAGE_CSP.encode()))
DOCS_HEADERS = (*_COMMON_SECURITY, (b"content-security-policy", DOCS_CSP.encode()))
API_HEADERS = (*_COMMON_SECURITY, (b"content-security-policy", API_CSP.encode()))
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


def security_headers(path: str) -> tuple[tuple[bytes, bytes], ...]:
    """The security headers of the answer to ``path``."""
    if path == "/" or path.startswith("/static/"):
        return PAGE_HEADERS
    if path in DOCS_PATHS:
        return DOCS_HEADERS
    return API_HEADERS


PROBLEM_413 = {
    "type": "about:blank",
    "title": "Request body too large",
    "status": 413,
}


async def _send_413(
    send: Send, limit: int, request_id: str, security: tuple[tuple[bytes, bytes], ...]
) -> None:
    body = json.dumps({**PROBLEM_413, "detail": f"request body exceeds {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *security,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ObservabilityMiddleware:
    """Request id, body-size limit, metrics and the access log, as one pure ASGI layer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        routes: Sequence[Any] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.route_template = RouteTemplates(routes)
        # Labelled metric children by (method, route, status): one dict lookup per request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_id, length, chunked = _request_headers(scope)
        request_id = raw_id.decode("latin-1")[:128] if raw_id else new_request_id()
        id_header = (b"x-request-id", request_id.encode("latin-1"))
        security = security_headers(scope.get("path", ""))
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500
        started = False
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                status = 413
                await _send_413(send, self.max_body_bytes, request_id, security)
                return
            received = 0
            rejected = False

            async def limited_receive() -> Message:
                """Count streamed bytes; over the limit, answer 413 and end the body."""
                nonlocal received, rejected, status, started
                if rejected:
                    return {"type": "http.disconnect"}
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        rejected = True
                        if not started:
                            started, status = True, 413
                            await _send_413(send, self.max_body_bytes, request_id, security)
                        return {"type": "http.disconnect"}
                return message

            async def tagged_send(message: Message) -> None:
                nonlocal status, started
                if rejected:  # the 413 went out already; the app's answer is dropped
                    return
                if message["type"] == "http.response.start":
                    started = True
                    status = int(message["status"])
                    message["headers"] = [*message.get("headers", ()), id_header, *security]
                await send(message)

            # Without a body announced (most GETs) there is nothing to count: no wrapper.
            has_body = length is not None or chunked
            try:
                await self.app(scope, limited_receive if has_body else receive, tagged_send)
            except Exception:
                if not rejected:  # a body cut short by the limit ends the app with an error
                    raise
        finally:
            self._record(scope, status, time.perf_counter() - start)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = self.route_template(scope)
        method = str(scope.get("method", "-"))
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # bounded: route templates, not paths, and few methods/statuses
            children = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %d %.1fms",
                method,
                scope.get("path", ""),
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
