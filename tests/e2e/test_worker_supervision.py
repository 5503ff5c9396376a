"""`movierec serve` keeps its embedded worker alive, and a worker never outlives its server.

Real processes on the real store (SQLite and PostgreSQL): the server is started with
``movierec serve``; the worker is the process it starts. ``kill -9`` on the worker: its job is
failed at once, a new worker comes back, ``/readyz`` and ``/metrics`` say so, and a retrain runs
to the end. ``kill -9`` on the server while a job trains: the orphaned worker stops within a
mini-batch and marks its job failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.ports import free_port
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import ADMIN_TOKEN
from tests.app.test_worker_cli import worker_pids
from tests.waiting import wait_until

# A job that trains far longer than any test waits: the tutorial preset, one user per step.
LONG_JOB = {"preset": "seed", "epochs": 5000}
CLI = "from app.cli import main; main()"


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Server:
    """A `movierec serve` process (with its embedded worker) on a free port."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "serve.log"
        env = {
            **os.environ,
            "MOVIEREC_DATABASE_URL": url,
            "MOVIEREC_MODEL_DIR": str(tmp_path / "models"),
            "MOVIEREC_ENVIRONMENT": "test",
            "MOVIEREC_DEVICE": "cpu",
            "MOVIEREC_ADMIN_TOKEN": ADMIN_TOKEN,
            "MOVIEREC_WORKER_POLL_SECONDS": "0.2",
            "MOVIEREC_HEARTBEAT_SECONDS": "0.2",
            "MOVIEREC_HEARTBEAT_TIMEOUT_SECONDS": "30",
            "MOVIEREC_MODEL_POLL_SECONDS": "0.2",
            "MOVIEREC_ACTIVATION_TOLERANCE": "1000",  # any finished model is activated
            "MOVIEREC_LOG_LEVEL": "INFO",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CLI, "serve", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        text = raw.decode()
        return status, json.loads(text) if text.startswith(("{", "[")) else text

    def get(self, path: str) -> Any:
        return self.request("GET", path)[1]

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.process.poll() is None, self.log()
            try:
                return self.request("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(up, 90, "the server to start")

    def worker(self) -> int:
        """The pid of the one live worker child, once it reports itself alive."""

        def found() -> int | None:
            pids = [p for p in worker_pids(self.process.pid) if running(p)]
            alive = self.get("/readyz")["worker"].get("alive") == 1
            return pids[0] if len(pids) == 1 and alive else None

        return int(wait_until(found, 30, "a live worker"))

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.get(f"/v1/admin/jobs/{job_id}"))

    def start_long_job(self) -> int:
        status, job = self.request("POST", "/v1/admin/retrain", LONG_JOB)
        assert status == 202, job

        def training() -> bool:
            current = self.job(job["id"])
            assert current["status"] in ("queued", "running"), current
            return current["status"] == "running" and current["progress"].get("epoch", 0) >= 1

        wait_until(training, 60, "the job to be training")
        return int(job["id"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def server(served, tmp_path: Path) -> Iterator[Server]:
    server = Server(served.url, tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        children = worker_pids(server.process.pid)
        server.stop()
        for pid in children:  # never leave a worker behind, whatever the test did
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        sys.stderr.write(server.log())


# One server per database for both parts (a server start costs seconds): first its worker is
# killed, then the server itself.
def test_serve_restarts_a_killed_worker_and_a_killed_server_leaves_no_worker(
    server: Server, served
) -> None:
    second = a_killed_worker_is_restarted_and_a_retrain_runs_to_the_end(server, served)
    the_worker_of_a_killed_server_stops_within_a_batch(server, served, second)


def a_killed_worker_is_restarted_and_a_retrain_runs_to_the_end(server: Server, served) -> int:
    first = server.worker()
    job_id = server.start_long_job()
    assert server.get("/readyz")["worker"]["busy"] == 1

    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    failed = wait_until(
        lambda: (j := server.job(job_id))["status"] == "failed" and j, 10, "the job to fail"
    )
    failed_after = time.monotonic() - killed
    second = server.worker()
    back_after = time.monotonic() - killed
    sys.stderr.write(
        f"worker killed: job failed after {failed_after:.2f} s, "
        f"a new worker alive after {back_after:.2f} s\n"
    )
    assert "SIGKILL" in failed["error"] and failed_after < 10  # not the 30 s heartbeat timeout
    assert second != first and not running(first)  # reaped, not a zombie
    worker = server.get("/readyz")["worker"]
    assert worker["restarts"] == 1 and "SIGKILL" in worker["last_exit"]
    assert "127.0.0.1" not in json.dumps(worker) and "/" not in json.dumps(worker)
    assert "movierec_training_worker_restarts 1.0" in server.get("/metrics")
    assert "was killed by SIGKILL" in server.log()

    status, job = server.request("POST", "/v1/admin/retrain", {"epochs": 1})
    assert status == 202, job

    def finished() -> dict[str, Any] | None:
        current = server.job(job["id"])
        return current if current["status"] in ("succeeded", "failed") else None

    done = wait_until(finished, 120, "the retrain to finish")
    assert done["status"] == "succeeded", done["error"]
    assert done["worker_id"].endswith(f":{second}")
    assert server.get("/v1/admin/models")["active"] == done["model_version_id"] != served.version_id
    return second


def the_worker_of_a_killed_server_stops_within_a_batch(server: Server, served, worker: int) -> None:
    assert server.worker() == worker
    job_id = server.start_long_job()
    epoch_before = server.job(job_id)["progress"]["epoch"]

    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    killed = time.monotonic()
    wait_until(lambda: not running(worker), 10, "the orphaned worker to stop")
    stopped_after = time.monotonic() - killed
    sys.stderr.write(f"server killed: its worker stopped after {stopped_after:.2f} s\n")

    from sqlalchemy import create_engine, text

    engine = create_engine(served.url)
    try:
        with engine.connect() as conn:
            status, error, progress = conn.execute(
                text("SELECT status, error, progress FROM training_jobs WHERE id = :id"),
                {"id": job_id},
            ).one()
    finally:
        engine.dispose()
    assert status == "failed" and "serving process" in error and "is gone" in error
    epoch_after = (json.loads(progress) if isinstance(progress, str) else progress)["epoch"]
    # Stopped in the middle of the epoch it was in, not after all 5,000.
    assert epoch_after < LONG_JOB["epochs"] and epoch_after >= epoch_before
