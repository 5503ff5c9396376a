"""`data fetch movielens-100k`: checksum-verified download from a local HTTP server standing in
for GroupLens; the PyPI fallback and the real MovieLens-100K import are slow tests."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from app.ingest.errors import FetchError
from app.ingest.fetch import FALLBACK_REQUIREMENT, fetch_movielens_100k
from app.ingest.formats import detect
from app.ingest.importer import import_dataset
from tests.app.ingest_fixtures import write_100k, zip_folder


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A tiny ml-100k.zip served over HTTP on localhost: (url, sha256)."""
    public = tmp_path / "public"
    public.mkdir()
    archive = zip_folder(write_100k(tmp_path / "source" / "ml-100k"), public / "ml-100k.zip")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(public))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=partial(server.serve_forever, 0.05), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
        yield url, hashlib.sha256(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_unpacks_flat(served: tuple[str, str], tmp_path: Path) -> None:
    url, sha256 = served
    dest = tmp_path / "data" / "ml-100k"
    result = fetch_movielens_100k(dest, url=url, sha256=sha256)
    assert result.source == url and url in result.message
    assert {"u.data", "u.item", "u.user"} <= {p.name for p in dest.iterdir()}
    assert detect(dest).release == "movielens-100k"

    again = fetch_movielens_100k(dest, url=url, sha256=sha256)
    assert again.source == "present" and "nothing to do" in again.message


def test_checksum_mismatch_is_an_error(served: tuple[str, str], tmp_path: Path) -> None:
    url, _ = served
    dest = tmp_path / "ml-100k"
    with pytest.raises(FetchError, match="does not match the published"):
        fetch_movielens_100k(dest, url=url, sha256="0" * 64)
    assert not dest.exists()


def test_unreachable_without_fallback_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="cannot reach"):
        fetch_movielens_100k(
            tmp_path / "ml-100k", url="http://127.0.0.1:9/ml-100k.zip", timeout=1, fallback=False
        )


@pytest.mark.slow
def test_fallback_gives_the_real_movielens_100k(database, tmp_path: Path) -> None:
    """Needs PyPI or pip's cache: GroupLens unreachable (port 9 refuses), so the wheel is used."""
    dest = tmp_path / "ml-100k"
    result = fetch_movielens_100k(dest, url="http://127.0.0.1:9/ml-100k.zip", timeout=1)
    assert result.source == FALLBACK_REQUIREMENT
    summary = import_dataset(database.url, detect(dest), progress=False)
    w = summary.written
    assert (w.ratings_added, w.users_added, w.movies_added) == (100_000, 943, 1_682)
