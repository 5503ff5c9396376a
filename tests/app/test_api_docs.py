"""``/docs`` and ``/redoc`` work offline: every asset they use is served by the app itself.

A real browser loading both pages (and failing on any request outside the app) is in
``tests/e2e/test_page.py``; here the pages and their assets are fetched through the app.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.test_api_helpers import app_settings

EXTERNAL = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


class _References(HTMLParser):
    """The URLs a page makes the browser fetch: src, href and data-openapi-url/spec-url."""

    ATTRIBUTES = ("src", "href", "data-openapi-url", "spec-url")

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in self.ATTRIBUTES and value]


def references(page: str) -> list[str]:
    parser = _References()
    parser.feed(page)
    return parser.urls


@pytest.fixture(scope="module")
def docs_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app without its lifespan: the reference pages need neither a store nor a model."""
    folder = tmp_path_factory.mktemp("docs")
    yield TestClient(create_app(app_settings(f"sqlite:///{folder / 'none.db'}", Path(folder))))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/docs",
            {"/static/favicon.svg", "/docs/assets/swagger-ui.css", "/openapi.json",
             "/docs/assets/swagger-ui-bundle.js", "/static/swagger-init.js"},
        ),
        ("/redoc", {"/static/favicon.svg", "/openapi.json", "/docs/assets/redoc.standalone.js"}),
    ],
)  # fmt: skip
def test_reference_page_and_its_assets_come_from_the_app(
    docs_client: TestClient, path: str, expected: set[str]
) -> None:
    page = docs_client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(page.text), f"{path} names an outside address"
    urls = references(page.text)
    assert set(urls) == expected
    for url in urls:
        asset = docs_client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    assert docs_client.get("/openapi.json").json()["info"]["title"] == "movierec"


def test_reference_pages_hold_no_inline_script(docs_client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        page = docs_client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), f"inline script on {path}"
        assert not re.search(r"\son[a-z]+\s*=", page), f"inline event handler on {path}"


def test_swagger_start_up_script_reads_the_url_from_the_page(docs_client: TestClient) -> None:
    script = docs_client.get("/static/swagger-init.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "dataset.openapiUrl" in script.text and not EXTERNAL.search(script.text)
    assert "validatorUrl: null" in script.text


def test_fastapi_cdn_pages_are_off(docs_client: TestClient) -> None:
    assert docs_client.get("/docs/oauth2-redirect").status_code == 404
    assert docs_client.get("/docs/assets/nothing.js").status_code == 404


def test_redoc_bundle_is_served_without_its_cdn_logo(docs_client: TestClient) -> None:
    bundle = docs_client.get("/docs/assets/redoc.standalone.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert b"cdn.redoc.ly" not in bundle.content
    assert b"API docs by Redocly" in bundle.content  # the rest of the bundle is untouched


def test_reference_pages_allow_nothing_outside_the_app(docs_client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        policy = docs_client.get(path).headers["content-security-policy"]
        assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
        assert "script-src 'self';" in policy  # no inline script, no other host
