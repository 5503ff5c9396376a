"""Parsing of comma-separated query parameters (``genres=a,b``, ``exclude=1,2``)."""

from __future__ import annotations

from app.api.schemas.common import MAX_ID
from app.services import recommendations as rec_service
from app.services.errors import InvalidInputError

MAX_LIST = 1000


def parse_names(value: str | None) -> tuple[str, ...]:
    """``"Action, comedy"`` → ``("Action", "comedy")``; blanks dropped."""
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_ids(value: str | None, field: str) -> tuple[int, ...]:
    """``"1,2,3"`` → ``(1, 2, 3)``; anything else is a 422 naming the field and the bad part."""
    if not value:
        return ()
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if len(parts) > MAX_LIST:
        raise InvalidInputError(f"{field}: at most {MAX_LIST} ids", field=field)
    ids: list[int] = []
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 10 or int(part) > MAX_ID:
            raise InvalidInputError(
                f"{field}: {part!r} is not a movie id (comma-separated integers)", field=field
            )
        ids.append(int(part))
    return tuple(dict.fromkeys(ids))


def query_filters(
    genres: str | None, year_min: int | None, year_max: int | None, exclude: str | None
) -> rec_service.Filters:
    """The list filters of a recommendations query (``genres`` and ``exclude`` comma lists)."""
    return rec_service.Filters(
        genres=parse_names(genres),
        year_min=year_min,
        year_max=year_max,
        exclude=parse_ids(exclude, "exclude"),
    )
