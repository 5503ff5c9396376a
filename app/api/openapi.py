"""The OpenAPI document, with the rules that depend on the configuration and the catalogue.

The API-key scheme is declared only when ``MOVIEREC_API_KEYS`` is set (otherwise those routes
are open and the document says so).

A genre filter accepts the genres of the catalogue and nothing else, so the document states
them: the ``genres`` items (query parameters and visitor bodies) carry a pattern built from the
catalogue of the serving model, any case, comma lists allowed, and so does the catalogue
search's single ``genre``. The document is built again when
that catalogue changes (a model swap or a catalogue reload), and has no such pattern while no
model is loaded (those routes then answer 503).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from app.api.routers.params import known_genres

_SPECIAL = set(r"\^$.|?*+()[]{}/")


def _any_case(name: str) -> str:
    """``"Sci-Fi"`` → ``"[Ss][Cc][Ii]-[Ff][Ii]"``: the name in any case, as a regex."""
    out = []
    for char in name:
        if char.lower() != char.upper():
            out.append(f"[{char.upper()}{char.lower()}]")
        elif char in _SPECIAL:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _one_genre(names: list[str]) -> str:
    """One of these genre names, any case, as a regex (longest first)."""
    return "(?:" + "|".join(_any_case(n) for n in sorted(names, key=len, reverse=True)) + ")"


def genre_list_pattern(names: list[str]) -> str:
    """A comma list of these genre names (any case, spaces around each): what the filters
    accept (``app.api.routers.params.parse_genres``)."""
    one = _one_genre(names)
    return rf"^ *{one} *(?:, *{one} *)*$"


def genre_pattern(names: list[str]) -> str:
    """One of these genre names (any case, spaces around it), or nothing (no filter): the
    catalogue search's ``genre``."""
    return rf"^(?: *{_one_genre(names)} *)?$"


def _genre_name_schemas(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schemas of every single ``genre`` query parameter (the catalogue search)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "genre" and parameter.get("in") == "query":
                    yield parameter["schema"]


def _genre_item_schemas(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schemas of every ``genres`` item: query parameters and the visitor body."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "genres" and parameter.get("in") == "query":
                    schema = parameter["schema"]
                    for option in schema.get("anyOf", [schema]):
                        if option.get("type") == "array":
                            yield option
    visitor = document.get("components", {}).get("schemas", {}).get("VisitorRequest")
    if visitor is not None:
        yield visitor["properties"]["genres"]


def _no_null_parameters(document: dict[str, Any]) -> None:
    """A query or path parameter is absent or has a value: it cannot be JSON ``null``. FastAPI
    writes an optional ``int | None`` parameter as ``anyOf: [integer, null]``, which tells a
    client (and a schema-driven test generator) that something other than the integer's plain
    digits may be sent; here the schema is the one non-null branch."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                options = schema.get("anyOf")
                if not options:
                    continue
                kept = [option for option in options if option.get("type") != "null"]
                if len(kept) == 1 and len(kept) < len(options):
                    del schema["anyOf"]
                    schema.update(kept[0])


def _drop_scheme(document: dict[str, Any], name: str) -> None:
    """Remove a security scheme and every requirement of it."""
    document.get("components", {}).get("securitySchemes", {}).pop(name, None)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            security = operation.get("security")
            if security is None:
                continue
            kept = [req for req in security if name not in req]
            if kept:
                operation["security"] = kept
            else:
                del operation["security"]


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` state the genres of the catalogue being served."""
    base_openapi = app.openapi
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        state = app.state.holder.state
        catalogue = None if state is None else state.catalogue
        if built.get("catalogue") is catalogue and "document" in built:
            return built["document"]
        document = copy.deepcopy(base_openapi())
        _no_null_parameters(document)
        if not app.state.api_keys:  # user data is open: no key to declare
            _drop_scheme(document, "apiKey")
        if catalogue is not None:
            names = list(known_genres(catalogue).values())
            for array in _genre_item_schemas(document):
                if names:
                    array["items"]["pattern"] = genre_list_pattern(names)
                else:
                    array["maxItems"] = 0
            for schema in _genre_name_schemas(document):
                # A catalogue without genres accepts none: only the empty value (no filter).
                schema["pattern"] = genre_pattern(names) if names else "^$"
        built.update(catalogue=catalogue, document=document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
