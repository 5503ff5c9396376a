"""Schema-based fuzzing of the whole API with Schemathesis, every check.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid, with a fixed seed
and 25 examples each, and every check Schemathesis has runs on every answer (the equivalent of
``schemathesis run --checks all``): no 5xx; status codes, content types, headers and bodies as
documented; schema-valid requests accepted and schema-invalid ones refused; ``Allow`` on 405;
authentication enforced where declared. It runs on SQLite with the tiny model serving, with API
keys and the admin token configured (both declared in the document, both given to Schemathesis
as its auth), in well under a minute.

One rule the document cannot state is left out of the generated requests: ``year_min`` after
``year_max`` (a relation between two parameters; JSON Schema has no way to say it). It is a 422,
tested by ``test_api_strict_input``. Movies not in the catalogue are 404s, which the checks take
as a valid answer to valid input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import ADMIN_TOKEN, app_settings

API_KEY = "fuzz-api-key-0123456789abcdef"
SEED = 20261204
load_all_checks()
ALL_CHECKS = CHECKS.get_all()  # the equivalent of `schemathesis run --checks all`


@pytest.fixture
def fuzzed_app(served, tmp_path: Path) -> Iterator[Any]:
    """The app with its lifespan running (model loaded), for Schemathesis to call."""
    app = create_app(app_settings(served.url, tmp_path, model_poll_seconds=30, api_keys=API_KEY))
    with TestClient(app):
        yield app


@pytest.fixture
def api_schema(fuzzed_app: Any) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "auth": {
                "openapi": {
                    "apiKey": {"bearer": API_KEY},
                    "adminToken": {"bearer": ADMIN_TOKEN},
                }
            },
        }
    )
    loaded = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app, config=config)
    loaded.hook(filter_case)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


def _reversed_years(values: Any) -> bool:
    if not isinstance(values, dict):
        return False
    low, high = values.get("year_min"), values.get("year_max")
    try:
        return low is not None and high is not None and int(low) > int(high)
    except (TypeError, ValueError):
        return False  # not integers: an invalid value, refused as such


def filter_case(ctx: Any, case: Any) -> bool:
    """Leave out year ranges that end before they start (see the module's docstring)."""
    return not (_reversed_years(case.query) or _reversed_years(case.body))


@pytest.mark.parametrize("database_session", ["sqlite"], indirect=True)
@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate(checks=ALL_CHECKS)
