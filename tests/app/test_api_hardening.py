"""Security headers on every response, a page without inline script, and a ``/readyz`` that
names hosts and paths only to the admin."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import STATIC_DIR, create_app
from app.observability import API_CSP, DOCS_CSP, PAGE_CSP
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import (
    admin_headers,
    app_settings,
    copy_checkpoint,
    register_result,
)
from tests.app.test_api_hot_route import hot_layer
from tests.app.test_api_swap import activate_in_store


def assert_secured(response: Any, csp: str) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff", response.url
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"] == csp
    assert "frame-ancestors 'none'" in csp


def test_every_kind_of_answer_carries_the_security_headers(client: TestClient) -> None:
    layer = hot_layer(client.app)
    answered = layer.answered
    assert_secured(client.get("/v1/users/2/recommendations?n=3"), API_CSP)
    assert layer.answered == answered + 1  # the hot route's own answer
    for url in (
        "/v1/users/2/recommendations?n=0",  # the declared route's 422
        "/v1/movies?q=film",
        "/v1/movies/404404",
        "/nowhere",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ):
        assert_secured(client.get(url), API_CSP)
    assert_secured(client.post("/v1/recommendations", content=b"x" * 2_000_000), API_CSP)  # 413
    assert_secured(client.delete("/v1/movies"), API_CSP)  # 405
    for url in ("/", "/static/app.js", "/static/app.css"):
        assert_secured(client.get(url), PAGE_CSP)
    for url in ("/docs", "/redoc"):
        assert_secured(client.get(url), DOCS_CSP)


def test_the_page_has_no_inline_script_or_style() -> None:
    for page in STATIC_DIR.glob("*.html"):
        html = page.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html, flags=re.IGNORECASE):
            assert re.search(r"\bsrc=", tag), f"{page.name}: inline script {tag}"
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html, flags=re.IGNORECASE), page.name
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.IGNORECASE), page.name
        assert not re.search(r"\sstyle\s*=", html, flags=re.IGNORECASE), page.name
        assert "<style" not in html.lower(), page.name
    for script in STATIC_DIR.glob("*.js"):
        code = script.read_text()
        assert "innerHTML" not in code and "eval(" not in code, script.name


def test_readyz_names_paths_only_to_the_admin(
    client: TestClient, served: Any, tiny_model: Any, tmp_path: Path
) -> None:
    bad = register_result(
        served.url, copy_checkpoint(tiny_model, tmp_path, corrupt=True), activate=False
    )
    activate_in_store(served, bad)
    deadline = time.monotonic() + 10
    while "last_failure" not in client.get("/readyz").json()["model"]:
        assert time.monotonic() < deadline, "the bad version was never tried"
        time.sleep(0.05)
    public = client.get("/readyz").json()["model"]["last_failure"]
    assert public["version"] == bad
    assert str(tmp_path) not in public["error"] and "admin token" in public["error"]
    detailed = client.get("/readyz", headers=admin_headers()).json()["model"]["last_failure"]
    assert str(tmp_path) in detailed["error"]
    wrong = client.get("/readyz", headers=admin_headers("not-the-token-0123456789"))
    assert str(tmp_path) not in wrong.text


@pytest.mark.parametrize("database_session", ["sqlite"], indirect=True)
def test_readyz_names_the_database_host_only_to_the_admin(served: Any, tmp_path: Path) -> None:
    url = "postgresql+psycopg://movierec@127.0.0.1:9/secret_db_name"  # nothing listens there
    with TestClient(create_app(app_settings(url, tmp_path))) as client:
        public = client.get("/readyz")
        assert public.status_code == 503 and not public.json()["database"]["ok"]
        assert "127.0.0.1" not in public.text and "secret_db_name" not in public.text
        detailed = client.get("/readyz", headers=admin_headers())
        assert "127.0.0.1" in detailed.json()["database"]["error"]
