"""Schemas shared by several resources."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

MAX_ID = 2_147_483_647  # ids are 32-bit integers in the store
CANONICAL_INTEGER = re.compile(r"0|[1-9][0-9]*")


def _canonical_integer(value: object) -> object:
    """A path or query integer as text must be written canonically: ``1`` is user 1, while
    ``1.0``, `` 1``, ``+1`` and ``01`` are refused (422), not read as 1."""
    if isinstance(value, str) and CANONICAL_INTEGER.fullmatch(value) is None:
        raise ValueError(
            "must be a whole number in plain decimal digits (no sign, point, space or leading "
            f"zero), got {value[:40]!r}"
        )
    return value


def json_integer(value: object) -> object:
    """A JSON body's integer as JSON Schema reads ``integer``: ``3.0`` is ``3`` (a number without
    a fraction). Anything else is passed on unchanged, for a strict model to accept or refuse:
    booleans and strings are not integers. Lists are converted item by item."""
    if isinstance(value, list):
        return [json_integer(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Metadata of an integer path or query parameter: canonical decimal digits only. Put it after
# the Path()/Query() in the Annotated (FastAPI reads the bounds from the first metadata).
CANONICAL = BeforeValidator(_canonical_integer)


def _as_utc(value: datetime) -> datetime:
    """Times are stored in UTC; SQLite hands them back without an offset, so add it."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class Problem(BaseModel):
    """An ``application/problem+json`` error body (RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem; `about:blank` when generic.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What was wrong with this request, naming the field or id.")
    request_id: str | None = Field(None, description="The request's id (X-Request-ID).")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for code, text in (
        (400, "Malformed request body"),
        (404, "Not found"),
        (409, "Conflict"),
        (413, "Request body too large"),
        (422, "Invalid request"),
        (503, "Database or model unavailable"),
    )
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The problem+json responses of an endpoint, for the OpenAPI document."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        if code in PROBLEM_RESPONSES:
            out[code] = PROBLEM_RESPONSES[code]
        elif code in (401, 403):
            out[code] = {
                "model": Problem,
                "content": {"application/problem+json": {}},
                "description": "Unauthorized" if code == 401 else "Forbidden",
            }
    return out
