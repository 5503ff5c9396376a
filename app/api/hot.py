"""The hot route, ``GET /v1/users/{user_id}/recommendations``, answered as plain ASGI.

Every page view asks for this route, so its requests skip the layers they do not need:
Starlette's routing over every route, the exception and exit-stack middlewares, and FastAPI's
per-request parameter validation (Pydantic over six query parameters). The parameters are
checked here by hand against the same bounds as the route's declaration in
``app.api.routers.users`` — that declaration stays the reference: it writes the OpenAPI
document, and it answers every request this layer does not take.

This layer takes only well-formed requests (a plain decimal id and plain values within the
declared bounds, each parameter at most once). Anything else, and any request whose service
call raises (unknown user, no model, database error, a bad ``exclude`` list), is handed
unchanged to the application, which answers it through the declared route: the error answers
(``application/problem+json``, status, headers) are the very ones of the full stack. The
request id, metrics and access log still come from ``ObservabilityMiddleware``, which wraps
this layer; the route template is set in the scope for the metrics' labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.routing import BaseRoute

from app.api.deps import api_key_valid
from app.api.routers.params import make_filters
from app.api.routers.recommendations import recommendations_body
from app.api.schemas.common import MAX_ID
from app.observability import ASGIApp, Receive, Scope, Send
from app.services import recommendations as rec_service

ROUTE_PATH = "/v1/users/{user_id}/recommendations"
PATH = re.compile(r"/v1/users/(0|[1-9][0-9]{0,9})/recommendations")
NUMBER = re.compile(r"0|[1-9][0-9]{0,5}")  # canonical, as the route's WholeNumber

# name: (low, high) of the integer parameters, as declared on the route.
INT_BOUNDS = {
    "n": (1, 100),
    "offset": (0, 10_000),
    "year_min": (0, 9999),
    "year_max": (0, 9999),
}
# name: max_length of the string parameters, as declared on the route.
STR_LIMITS = {"genres": 2000, "exclude": 20_000}


def _find_route(routes: Sequence[BaseRoute], path: str) -> BaseRoute | None:
    """The route declared for ``path``, looking into included routers."""
    for route in routes:
        if getattr(route, "path", None) == path:
            return route
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        found = _find_route(inner, path) if inner else None
        if found is not None:
            return found
    return None


class HotParams:
    """The route's parameters once checked; ``parse`` returns None for anything unusual."""

    __slots__ = ("exclude", "genres", "n", "offset", "user_id", "year_max", "year_min")

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.n = 10
        self.offset = 0
        self.genres: str | None = None
        self.year_min: int | None = None
        self.year_max: int | None = None
        self.exclude: str | None = None

    @classmethod
    def parse(cls, user_id: int, query_string: bytes) -> HotParams | None:
        if user_id > MAX_ID:
            return None
        params = cls(user_id)
        if not query_string:
            return params
        seen: set[str] = set()
        # The same decoding as Starlette's QueryParams.
        for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if key in seen:  # repeated: left to the full stack's rules
                return None
            seen.add(key)
            bounds = INT_BOUNDS.get(key)
            if bounds is not None:
                if NUMBER.fullmatch(value) is None:
                    return None
                number = int(value)
                if not bounds[0] <= number <= bounds[1]:
                    return None
                setattr(params, key, number)
                continue
            limit = STR_LIMITS.get(key)
            if limit is not None:
                if not value or len(value) > limit:
                    return None
                setattr(params, key, value)
            # Other names are ignored, as the declared route ignores them.
        return params


class HotRecommendations:
    """Answers well-formed ``GET /v1/users/{id}/recommendations`` requests; passes the rest on.

    ``app`` is the FastAPI application's stack below this layer and ``api`` the application
    itself (its ``state`` holds the model, the ratings reader, the batcher and the metrics).
    """

    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._route: BaseRoute | None = None
        self._counters: dict[str, Any] = {}
        self.answered = 0  # requests this layer answered itself

    def _authorised(self, scope: Scope) -> bool:
        """With API keys configured, only a request with a valid key is answered here (the
        declared route answers the others: 401 with its problem+json)."""
        keys = self.api.state.api_keys
        if not keys:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return api_key_valid(keys, value.decode("latin-1"))
        return False

    def route(self) -> BaseRoute | None:
        """The declared route (for the metrics' route label), found once."""
        if self._route is None:
            self._route = _find_route(self.api.routes, ROUTE_PATH)
        return self._route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope.get("root_path")
            and (match := PATH.fullmatch(scope["path"])) is not None
            and (params := HotParams.parse(int(match.group(1)), scope["query_string"])) is not None
            and self._authorised(scope)
        ):
            try:
                body, version = await self._recommend(params)
            except Exception:
                pass  # answered below by the declared route, with its error response
            else:
                scope["route"] = self.route()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                            (b"x-model-version", version),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                self.answered += 1
                return
        await self.app(scope, receive, send)

    async def _recommend(self, p: HotParams) -> tuple[bytes, bytes]:
        """The declared route's work: the same service call and the same JSON body."""
        state = self.api.state
        holder = state.holder
        live = holder.state
        filters = make_filters(
            p.genres, p.year_min, p.year_max, p.exclude, None if live is None else live.catalogue
        )
        result = await rec_service.recommend_for_user(
            holder.ratings,
            live,
            state.batcher,
            p.user_id,
            p.n,
            p.offset,
            filters,
            memo=state.memo,
        )
        counter = self._counters.get(result.source)
        if counter is None:
            counter = self._counters[result.source] = state.metrics.recommendations.labels(
                result.source
            )
        counter.inc()
        return recommendations_body(p.user_id, result), str(result.model_version).encode()
