"""Retraining end to end through a real ``movierec worker`` process.

The API (in process, lifespan running) queues the job; the worker subprocess claims it, trains
on the tiny store, registers and activates the new version; the API swaps it in without a
restart while client threads keep asking for recommendations. A worker killed mid-job leaves a
job that is marked failed once its heartbeat is older than the timeout, and the active model
stays as it was.
"""

from __future__ import annotations

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
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import admin_headers, app_settings
from tests.waiting import wait_until

AUTH = admin_headers()
HEARTBEAT_TIMEOUT = 2.0


def worker_env(url: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MOVIEREC_DATABASE_URL": url,
            "MOVIEREC_MODEL_DIR": str(tmp_path / "models"),
            "MOVIEREC_ENVIRONMENT": "test",
            "MOVIEREC_DEVICE": "cpu",
            "MOVIEREC_WORKER_POLL_SECONDS": "0.2",
            "MOVIEREC_HEARTBEAT_SECONDS": "0.2",
            "MOVIEREC_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
            # Any finished model replaces the active one, so the swap is certain.
            "MOVIEREC_ACTIVATION_TOLERANCE": "1000",
            "MOVIEREC_LOG_LEVEL": "INFO",
        }
    )
    return env


@pytest.fixture
def worker_process(served, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``movierec worker`` running against the test store; its log is shown on failure."""
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "worker"],
            env=worker_env(served.url, tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
            sys.stderr.write(log_path.read_text(errors="replace")[-3000:])


@pytest.fixture
def api(served, tmp_path: Path) -> Iterator[TestClient]:
    settings = app_settings(served.url, tmp_path, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT)
    with TestClient(create_app(settings)) as client:
        yield client


def test_retrain_through_the_worker_swaps_in_the_new_version_without_errors(
    api: TestClient, served, worker_process: subprocess.Popen[bytes]
) -> None:
    errors: list[str] = []
    versions: set[int] = set()
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            r = api.get("/v1/users/2/recommendations", params={"n": 5})
            if r.status_code != 200 or len(r.json()["items"]) != 5:
                errors.append(f"{r.status_code}: {r.text[:200]}")
            else:
                versions.add(r.json()["model_version"])
            time.sleep(0.01)

    clients = [threading.Thread(target=keep_asking) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: served.version_id in versions, 10, "an answer of the old version")
        queued = api.post("/v1/admin/retrain", json={"epochs": 2}, headers=AUTH)
        assert queued.status_code == 202
        job_id = queued.json()["id"]
        conflict = api.post("/v1/admin/retrain", headers=AUTH)
        assert conflict.status_code == 409 and conflict.json()["job"]["id"] == job_id

        def finished() -> dict[str, Any] | None:
            job = api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()
            return job if job["status"] in ("succeeded", "failed") else None

        job = wait_until(finished, 90, "the job to finish")
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"]["epoch"] >= 1 and job["progress"]["epochs"] == 2
        assert job["worker_id"] and job["heartbeat_at"]
        new_version = job["model_version_id"]
        assert new_version and new_version != served.version_id
        assert "activated" in job["message"]
        wait_until(
            lambda: api.get("/v1/users/2/recommendations").json()["model_version"] == new_version,
            10,
            "the new version to serve",
        )
        wait_until(lambda: new_version in versions, 10, "the clients to get the new version")
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert errors == []
    assert versions >= {served.version_id, new_version}
    models = api.get("/v1/admin/models", headers=AUTH).json()
    assert models["active"] == new_version
    png = api.get(f"/v1/admin/models/{new_version}/learning-curve.png", headers=AUTH)
    assert png.status_code == 200
    assert worker_process.poll() is None  # still polling for the next job


def test_a_worker_killed_mid_job_leaves_a_failed_job_and_the_model_unchanged(
    api: TestClient, served, worker_process: subprocess.Popen[bytes]
) -> None:
    # The tutorial preset trains one user per step with no early stopping: long enough to kill.
    queued = api.post("/v1/admin/retrain", json={"preset": "seed", "epochs": 5000}, headers=AUTH)
    job_id = queued.json()["id"]

    def training() -> bool:
        job = api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()
        assert job["status"] in ("queued", "running"), job
        return job["status"] == "running" and job["progress"].get("epoch", 0) >= 1

    wait_until(training, 60, "the job to be training")
    worker_process.send_signal(signal.SIGKILL)
    worker_process.wait(timeout=10)
    assert api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()["status"] == "running"

    def failed() -> dict[str, Any] | None:
        job = api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()
        return job if job["status"] == "failed" else None

    started = time.monotonic()
    job = wait_until(failed, HEARTBEAT_TIMEOUT + 10, "the dead worker's job to fail")
    assert time.monotonic() - started <= HEARTBEAT_TIMEOUT + 10
    assert "heartbeat" in job["error"] and job["finished_at"]
    assert api.get("/v1/admin/models", headers=AUTH).json()["active"] == served.version_id
    body = api.get("/v1/users/2/recommendations").json()
    assert body["model_version"] == served.version_id
    # A new retrain is accepted again.
    assert api.post("/v1/admin/retrain", headers=AUTH).status_code == 202


def start_long_job(api: TestClient) -> int:
    queued = api.post("/v1/admin/retrain", json={"preset": "seed", "epochs": 5000}, headers=AUTH)
    assert queued.status_code == 202, queued.text
    job_id = int(queued.json()["id"])

    def training() -> bool:
        job = api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()
        assert job["status"] in ("queued", "running"), job
        return job["status"] == "running" and job["progress"].get("epoch", 0) >= 1

    wait_until(training, 60, "the job to be training")
    return job_id


def test_a_running_job_is_cancelled_and_the_worker_takes_the_next_one(
    api: TestClient, served, worker_process: subprocess.Popen[bytes]
) -> None:
    job_id = start_long_job(api)
    assert api.get("/readyz").json()["worker"] == {"alive": 1, "busy": 1, "restarts": 0}

    cancelled = api.post(f"/v1/admin/jobs/{job_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    # The worker lets go within a heartbeat (0.2 s here) and a mini-batch.
    asked = time.monotonic()
    wait_until(lambda: api.get("/readyz").json()["worker"]["busy"] == 0, 5, "the worker to stop")
    sys.stderr.write(
        f"cancelled: the worker was idle again after {time.monotonic() - asked:.2f} s\n"
    )
    job = api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()
    assert job["status"] == "cancelled" and job["progress"]["epoch"] < 5000
    assert job["model_version_id"] is None
    again = api.post(f"/v1/admin/jobs/{job_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "already ended" in again.json()["detail"]

    queued = api.post("/v1/admin/retrain", json={"epochs": 1}, headers=AUTH)
    assert queued.status_code == 202
    next_id = queued.json()["id"]

    def finished() -> dict[str, Any] | None:
        job = api.get(f"/v1/admin/jobs/{next_id}", headers=AUTH).json()
        return job if job["status"] in ("succeeded", "failed") else None

    done = wait_until(finished, 90, "the next job to finish")
    assert done["status"] == "succeeded", done["error"]
    versions = api.get("/v1/admin/models", headers=AUTH).json()["items"]
    assert sorted(v["id"] for v in versions) == [served.version_id, done["model_version_id"]]
    assert worker_process.poll() is None


def test_sigterm_stops_a_training_worker_within_seconds_and_fails_its_job(
    api: TestClient, served, worker_process: subprocess.Popen[bytes]
) -> None:
    job_id = start_long_job(api)
    worker_process.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    assert worker_process.wait(timeout=10) == 0  # at the next mini-batch, not the epoch's end
    sys.stderr.write(f"SIGTERM: the worker exited after {time.monotonic() - asked:.2f} s\n")
    job = api.get(f"/v1/admin/jobs/{job_id}", headers=AUTH).json()
    assert job["status"] == "failed" and "interrupted" in job["error"]
    assert "SIGTERM" in job["error"] and job["progress"]["epoch"] < 5000
    assert api.get("/readyz").json()["worker"]["alive"] == 0
    assert api.get("/readyz").json()["worker"]["last_exit"] == "the worker received SIGTERM"
