"""Slow and silent clients against a real `movierec serve`: a connection whose request headers
do not arrive in time is closed (MOVIEREC_HEADER_TIMEOUT_SECONDS), an idle kept-alive one too
(MOVIEREC_KEEP_ALIVE_SECONDS), and clients that send whole requests are served meanwhile."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import migrate
from bench.ports import free_port

HALF_OPEN = 50


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("slow-clients")
    url = f"sqlite:///{folder / 'movierec.db'}"
    migrate.upgrade(url)
    chosen = free_port()
    environ = {
        **os.environ,
        "MOVIEREC_DATABASE_URL": url,
        "MOVIEREC_MODEL_DIR": str(folder / "models"),
        "MOVIEREC_ENVIRONMENT": "test",
        "MOVIEREC_LOG_LEVEL": "WARNING",
        "MOVIEREC_HEADER_TIMEOUT_SECONDS": "1",
        "MOVIEREC_KEEP_ALIVE_SECONDS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["movierec", "serve", "--port", str(chosen), "--no-worker"],
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", chosen), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.2)
        yield chosen
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_unfinished_headers_are_closed_and_whole_requests_served(port: int) -> None:
    half_open = []
    for _ in range(HALF_OPEN):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        sock.setblocking(False)
        half_open.append(sock)
    trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
    trickle.setblocking(False)
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    silent.setblocking(False)
    try:
        start = time.monotonic()
        # Meanwhile a whole request is answered at once.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        # A byte every 0.2 s keeps no connection alive past the header timeout (1 s; the
        # deadlines leave room for a loaded host: without the timeout nothing closes at all).
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        sent = 0
        while not closed_by_server(trickle) and time.monotonic() - start < 6:
            try:
                trickle.send(request[sent : sent + 1])
                sent += 1
            except OSError:
                break
            time.sleep(0.2)
        assert time.monotonic() - start < 6, "the trickling client was not cut off"
        held = HALF_OPEN + 1
        while time.monotonic() - start < 6:
            held = sum(not closed_by_server(s) for s in [*half_open, silent])
            if held == 0:
                break
            time.sleep(0.1)
        assert held == 0, f"{held} of {HALF_OPEN + 1} silent connections still held"
    finally:
        for sock in [*half_open, trickle, silent]:
            sock.close()


def test_an_idle_kept_alive_connection_is_closed(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        assert not response.will_close  # kept alive ...
        sock = conn.sock
        assert sock is not None
        sock.settimeout(4)
        start = time.monotonic()
        assert sock.recv(1) == b""  # ... until the server closes it
        assert time.monotonic() - start < 3
    finally:
        conn.close()
