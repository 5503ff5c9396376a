"""`movierec serve` starts one worker process beside uvicorn and stops it on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db import migrate
from app.db.session import make_engine
from bench.ports import free_port


def worker_pids(parent: int) -> list[int]:
    """Pids of the `app.worker` children of ``parent``."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True
    )
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "app.worker" in line]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # two processes importing torch: about half a minute on a busy machine
def test_serve_runs_an_embedded_worker_and_stops_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    port = free_port()
    env = {
        **os.environ,
        "MOVIEREC_DATABASE_URL": url,
        "MOVIEREC_MODEL_DIR": str(tmp_path / "models"),
        "MOVIEREC_ENVIRONMENT": "test",
        "MOVIEREC_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "serve", "--port", str(port)],
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the server did not start")
                time.sleep(0.2)
        [worker] = worker_pids(server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) is not None
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.slow  # two processes importing torch
def test_ctrl_c_stops_serve_and_its_worker_without_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    port = free_port()
    env = {
        **os.environ,
        "MOVIEREC_DATABASE_URL": url,
        "MOVIEREC_MODEL_DIR": str(tmp_path / "models"),
        "MOVIEREC_ENVIRONMENT": "test",
        "MOVIEREC_LOG_LEVEL": "INFO",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from app.cli import main; main()",
                "serve",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        deadline = time.monotonic() + 60
        while not worker_pids(server.pid):
            assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()
            time.sleep(0.2)
        engine = make_engine(url)
        try:  # the worker reports itself once its signal handlers are in place
            while True:
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM workers")).scalar():
                        break
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            engine.dispose()
        [worker] = worker_pids(server.pid)
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: the whole group
        assert server.wait(timeout=30) is not None
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)
        output = log_path.read_text()
        assert "restarting it" not in output, output
        assert "SIGTERM: stopping" in output  # stopped by the server, after its shutdown
    finally:
        if server.poll() is None:
            server.kill()
