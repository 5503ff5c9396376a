"""Schema-based fuzzing of the whole API with Schemathesis.

Every operation of ``/openapi.json`` gets generated requests (valid and invalid ones); no answer
may be a 5xx, and every answer must match the documented status codes, content types and
response schemas. Runs on SQLite with the tiny model serving, bounded to well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import ADMIN_TOKEN, app_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def fuzzed_app(served, tmp_path: Path) -> Iterator[Any]:
    """The app with its lifespan running (model loaded), for Schemathesis to call."""
    app = create_app(app_settings(served.url, tmp_path, model_poll_seconds=30))
    with TestClient(app):
        yield app


@pytest.fixture
def api_schema(fuzzed_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.parametrize("database_session", ["sqlite"], indirect=True)
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    if case.path.startswith("/v1/admin"):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
    case.call_and_validate(checks=CHECKS)
