"""Writes against `movierec serve --workers 4 --no-worker`: real processes, SQLite and PostgreSQL.

- 8 clients race the first ratings of 40 new users: every answer is a 2xx and every rating is
  stored (users are created by one atomic statement, never SELECT then INSERT).
- 300 PUT-then-GET pairs, each request on a fresh connection (so the kernel spreads them over
  the 4 processes): the GET sees the write every time, through the FastAPI route (the user's
  ratings) and through the plain-ASGI hot route (the rated movie is left out of the user's
  recommendations), because the write is committed before its response is sent.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.ports import free_port
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import N_MOVIES

PROCESSES = 4
CLIENTS = 8
RACED_USERS = 40
PAIRS = 300


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request on a connection of its own: ``(status, parsed JSON body or None)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


@pytest.fixture
def server(served: Any, tmp_path: Path) -> Iterator[int]:
    """`movierec serve --workers 4 --no-worker` on the served store; its port."""
    port = free_port()
    environ = {
        **os.environ,
        "MOVIEREC_LOG_LEVEL": "WARNING",
        "MOVIEREC_DEVICE": "cpu",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["movierec", "serve", "--port", str(port), "--workers", str(PROCESSES),
             "--no-worker"],
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 2 * PROCESSES:  # several answers in a row: every process has its model
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not become ready:\n{log.read_text()}")
            try:
                status, _ = call(port, "GET", "/readyz")
            except OSError:
                status = 0
            ready = ready + 1 if status == 200 else 0
            time.sleep(0.05 if status == 200 else 0.3)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_writes_hold_across_four_api_processes(server: int, served: Any) -> None:
    port = server
    # 1. Eight clients race the first ratings of 40 new users.
    barrier = threading.Barrier(CLIENTS)
    statuses: list[int] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        movie = index + 1
        for user in range(50_001, 50_001 + RACED_USERS):
            barrier.wait(timeout=60)
            status, _ = call(port, "PUT", f"/v1/users/{user}/ratings/{movie}", {"rating": 4})
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = {s: statuses.count(s) for s in statuses if not 200 <= s < 300}
    print(f"race: {len(statuses)} first ratings, refused {refused}")
    assert len(statuses) == CLIENTS * RACED_USERS
    assert refused == {}
    for user in range(50_001, 50_001 + RACED_USERS):
        status, page = call(port, "GET", f"/v1/users/{user}/ratings?limit=50")
        assert status == 200 and page["total"] == CLIENTS, (user, page)

    # 2. PUT, then at once a GET on another connection: the write is always visible.
    missed_route = missed_hot = 0
    for i in range(PAIRS):
        user, movie = 60_001 + i, 1 + i % N_MOVIES
        status, _ = call(port, "PUT", f"/v1/users/{user}/ratings/{movie}", {"rating": 5})
        assert status == 201
        status, page = call(port, "GET", f"/v1/users/{user}/ratings")
        if status != 200 or [r["movie_id"] for r in page["items"]] != [movie]:
            missed_route += 1
        status, recs = call(port, "GET", f"/v1/users/{user}/recommendations?n=100")
        if (
            status != 200
            or recs["source"] != "model"
            or movie in {item["movie_id"] for item in recs["items"]}
        ):
            missed_hot += 1
    print(f"read-your-writes: {PAIRS} pairs, missed {missed_route} (ratings), {missed_hot} (hot)")
    assert (missed_route, missed_hot) == (0, 0)
