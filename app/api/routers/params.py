"""The recommendation filters of the query string and of visitor bodies, checked in one place.

- ``genres``: genre names of the catalogue, any case, as a comma list, as a repeated parameter,
  or both (``genres=Comedy&genres=Horror`` is ``genres=Comedy,Horror``). A name the catalogue
  does not know is a 422 that lists the known ones.
- ``exclude`` (and ``movie_ids``): movie ids as comma lists, repeated or not.
- ``year_min`` after ``year_max`` is a 422.

The OpenAPI document states the same rules (``app.api.openapi``): the id lists and the genre
names as patterns, the latter built from the catalogue being served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated

from fastapi import Query
from pydantic import Field

from app.api.schemas.common import CANONICAL, MAX_ID
from app.services import recommendations as rec_service
from app.services.catalogue import Catalogue
from app.services.errors import InvalidInputError


def _integer_pattern(limit: int) -> str:
    """A regular expression of the canonical decimal integers from 0 to ``limit``."""
    digits = str(limit)
    width = len(digits)
    parts = ["0"] + ([f"[1-9][0-9]{{0,{width - 2}}}"] if width > 1 else [])
    for i, digit in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            top = int(digit) - 1
            span = str(low) if top == low else f"[{low}-{top}]"
            rest = width - i - 1
            parts.append(digits[:i] + span + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(digits)
    return "(?:" + "|".join(parts) + ")"


ID_PATTERN = _integer_pattern(MAX_ID)
# A comma list of movie ids, spaces allowed around each: what ``parse_ids`` accepts.
ID_LIST_PATTERN = rf"^ *{ID_PATTERN} *(?:, *{ID_PATTERN} *)*$"


def parse_ids(values: str | Sequence[str] | None, field: str) -> tuple[int, ...]:
    """``"1,2,3"`` (or ``["1,2", "3"]``) → ``(1, 2, 3)``, without repeats; anything else is a
    422 naming the field and the bad part."""
    if not values:
        return ()
    ids: list[int] = []
    for value in [values] if isinstance(values, str) else values:
        for raw in value.split(","):
            part = raw.strip(" ")
            if (
                not part.isascii()
                or not part.isdigit()
                or (len(part) > 1 and part[0] == "0")
                or len(part) > 10
                or int(part) > MAX_ID
            ):
                raise InvalidInputError(
                    f"{field}: {part[:40]!r} is not a movie id (comma-separated integers from 0 "
                    f"to {MAX_ID})",
                    field=field,
                )
            ids.append(int(part))
    return tuple(dict.fromkeys(ids))


GENRES_DESCRIPTION = (
    "Keep movies of any of these genres (any case): a comma list, a repeated parameter, or both. "
    "A genre the catalogue does not have is a 422 that lists the known ones."
)
GenresQuery = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=2000)]] | None,
    Query(max_length=50, description=GENRES_DESCRIPTION),
]
ExcludeQuery = Annotated[
    list[Annotated[str, Field(max_length=20_000, json_schema_extra={"pattern": ID_LIST_PATTERN})]]
    | None,
    Query(
        max_length=50,
        description="Movie ids to leave out: a comma list, a repeated parameter, or both.",
    ),
]
YearMinQuery = Annotated[
    int | None, Query(ge=0, le=9999, description="Earliest year (at most year_max)."), CANONICAL
]
YearMaxQuery = Annotated[int | None, Query(ge=0, le=9999, description="Latest year."), CANONICAL]

_known: tuple[Catalogue, dict[str, str]] | None = None


def known_genres(catalogue: Catalogue) -> dict[str, str]:
    """``{lower-cased name: name as the catalogue writes it}`` of the catalogue's genres
    (computed once per catalogue)."""
    global _known
    cached = _known
    if cached is not None and cached[0] is catalogue:
        return cached[1]
    names: dict[str, str] = {}
    for row in catalogue.genres:
        for name in row:
            names.setdefault(name.lower(), name)
    names = dict(sorted(names.items(), key=lambda item: item[1]))
    _known = (catalogue, names)
    return names


def parse_genres(
    values: str | Iterable[str] | None, catalogue: Catalogue | None, field: str = "genres"
) -> tuple[str, ...]:
    """Genre names from comma lists (``"Action, comedy"``) or a list of them; each must be a
    genre of ``catalogue`` (any case), or it is a 422 listing the known ones. Without a
    catalogue (no model loaded: the request ends in 503) names are taken as they are."""
    if not values:
        return ()
    names: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        for raw in value.split(","):
            name = raw.strip(" ")
            if not name:
                raise InvalidInputError(f"{field}: an empty genre name", field=field)
            names.append(name)
    if catalogue is not None:
        known = known_genres(catalogue)
        unknown = [n for n in names if n.lower() not in known]
        if unknown:
            raise InvalidInputError(
                f"{field}: unknown genre {unknown[0][:100]!r}; the catalogue's genres are "
                + ", ".join(known.values()),
                field=field,
                known=list(known.values()),
            )
    return tuple(dict.fromkeys(names))


def make_filters(
    genres: str | Iterable[str] | None,
    year_min: int | None,
    year_max: int | None,
    exclude: str | Sequence[str] | Sequence[int] | None,
    catalogue: Catalogue | None,
) -> rec_service.Filters:
    """The filters of a recommendation request, each rule checked (422 naming the field)."""
    if year_min is not None and year_max is not None and year_min > year_max:
        raise InvalidInputError(
            f"year_min ({year_min}) is after year_max ({year_max})", field="year_min"
        )
    if exclude and not isinstance(exclude, str) and isinstance(next(iter(exclude)), int):
        ids = tuple(dict.fromkeys(exclude))  # a JSON body's list of integers
    else:
        ids = parse_ids(exclude, "exclude")  # type: ignore[arg-type]
    return rec_service.Filters(
        genres=parse_genres(genres, catalogue),
        year_min=year_min,
        year_max=year_max,
        exclude=ids,  # type: ignore[arg-type]
    )
