"""``/v1/admin``: authentication, retrain jobs, model versions, activation and rollback."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db.models import JobStatus, ModelVersion, TrainingJob, utcnow
from app.main import create_app
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import (
    admin_headers,
    app_settings,
    assert_problem,
    copy_checkpoint,
    register_result,
)

AUTH = admin_headers()


class TestAuthentication:
    def test_missing_or_wrong_token_is_401_with_challenge(self, client: TestClient) -> None:
        for headers in ({}, admin_headers("wrong"), {"Authorization": "Basic abc"}):
            r = client.get("/v1/admin/models", headers=headers)
            assert_problem(r, 401, "token")
            assert r.headers["www-authenticate"].startswith("Bearer")

    def test_right_token_passes(self, client: TestClient) -> None:
        assert client.get("/v1/admin/models", headers=AUTH).status_code == 200

    def test_no_token_configured_refuses_everything(self, served, tmp_path: Path) -> None:
        settings = app_settings(served.url, tmp_path, admin_token=None)
        with TestClient(create_app(settings)) as c:
            for method, path in (
                ("GET", "/v1/admin/jobs"),
                ("POST", "/v1/admin/retrain"),
                ("POST", "/v1/admin/models/1/activate"),
            ):
                assert_problem(c.request(method, path, headers=AUTH), 403, "admin is disabled")


class TestJobs:
    def test_retrain_queues_a_job_and_a_second_is_409(self, client: TestClient) -> None:
        r = client.post("/v1/admin/retrain", json={"epochs": 2, "preset": "default"}, headers=AUTH)
        assert r.status_code == 202
        job = r.json()
        assert job["status"] == "queued" and job["params"] == {"epochs": 2, "preset": "default"}
        again = client.post("/v1/admin/retrain", headers=AUTH)
        body = assert_problem(again, 409, f"job {job['id']}")
        assert body["job"]["id"] == job["id"] and body["job"]["status"] == "queued"
        listed = client.get("/v1/admin/jobs", headers=AUTH).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]
        one = client.get(f"/v1/admin/jobs/{job['id']}", headers=AUTH).json()
        assert one["status"] == "queued" and one["progress"] == {}
        assert_problem(client.get("/v1/admin/jobs/999", headers=AUTH), 404, "job 999")

    def test_bad_overrides_are_422(self, client: TestClient) -> None:
        assert_problem(
            client.post("/v1/admin/retrain", json={"epochs": 0}, headers=AUTH), 422, "epochs"
        )
        assert_problem(
            client.post("/v1/admin/retrain", json={"preset": "../x"}, headers=AUTH), 422, "preset"
        )
        unknown = client.post("/v1/admin/retrain", json={"preset": "bogus"}, headers=AUTH)
        assert_problem(unknown, 422, "preset", "bogus", "default", "seed")
        assert client.get("/v1/admin/jobs", headers=AUTH).json()["total"] == 0  # nothing queued

    def test_a_running_job_without_heartbeat_is_failed_when_listed(
        self, client: TestClient, served
    ) -> None:
        old = utcnow() - timedelta(hours=1)
        with Session(served.engine) as session, session.begin():
            session.add(
                TrainingJob(
                    status=JobStatus.running.value,
                    params={},
                    progress={},
                    started_at=old,
                    heartbeat_at=old,
                    worker_id="gone:1",
                )
            )
        job = client.get("/v1/admin/jobs", headers=AUTH).json()["items"][0]
        assert job["status"] == "failed" and "heartbeat" in job["error"]
        # ... so it no longer blocks a new retrain.
        assert client.post("/v1/admin/retrain", headers=AUTH).status_code == 202

    def test_a_queued_job_is_cancelled_and_no_longer_blocks_a_retrain(
        self, client: TestClient
    ) -> None:
        job = client.post("/v1/admin/retrain", headers=AUTH).json()
        assert_problem(client.post("/v1/admin/retrain", headers=AUTH), 409, f"job {job['id']}")
        r = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
        listed = client.get(f"/v1/admin/jobs/{job['id']}", headers=AUTH).json()
        assert listed["status"] == "cancelled" and listed["message"] == "cancelled by an admin"
        again = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=AUTH)
        assert_problem(again, 409, "already ended", "cancelled")
        assert client.post("/v1/admin/retrain", headers=AUTH).status_code == 202
        assert_problem(client.post("/v1/admin/jobs/999/cancel", headers=AUTH), 404, "job 999")
        assert_problem(client.post(f"/v1/admin/jobs/{job['id']}/cancel"), 401, "token")


class TestModels:
    def test_list_activate_and_roll_back(
        self, client: TestClient, served, tiny_model, tmp_path: Path
    ) -> None:
        second = register_result(served.url, copy_checkpoint(tiny_model, tmp_path), activate=False)
        listed = client.get("/v1/admin/models", headers=AUTH).json()
        assert listed["active"] == served.version_id
        assert [m["id"] for m in listed["items"]] == [second, served.version_id]
        assert listed["items"][1]["is_active"] and listed["items"][1]["status"] == "active"
        assert "validation" in listed["items"][1]["metrics"]

        r = client.post(f"/v1/admin/models/{second}/activate", headers=AUTH)
        assert r.status_code == 200 and r.json()["is_active"]
        recs = client.get("/v1/users/2/recommendations")
        assert recs.json()["model_version"] == second  # swapped at once in this process

        back = client.post(f"/v1/admin/models/{served.version_id}/activate", headers=AUTH)
        assert back.status_code == 200
        assert client.get("/v1/users/2/recommendations").json()["model_version"] == (
            served.version_id
        )
        statuses = {
            m["id"]: m["status"]
            for m in client.get("/v1/admin/models", headers=AUTH).json()["items"]
        }
        assert statuses == {served.version_id: "active", second: "retired"}

    def test_corrupt_checkpoint_is_refused_marked_failed_and_old_keeps_serving(
        self, client: TestClient, served, tiny_model, tmp_path: Path
    ) -> None:
        bad = register_result(
            served.url, copy_checkpoint(tiny_model, tmp_path, corrupt=True), activate=False
        )
        r = client.post(f"/v1/admin/models/{bad}/activate", headers=AUTH)
        assert_problem(r, 409, f"model version {bad}")
        with Session(served.engine) as session:
            version = session.get(ModelVersion, bad)
            assert version is not None and version.status == "failed" and not version.is_active
            assert version.note
        assert client.get("/v1/users/2/recommendations").json()["model_version"] == (
            served.version_id
        )
        assert_problem(client.post(f"/v1/admin/models/{bad}/activate", headers=AUTH), 409, "failed")

    def test_a_failed_version_whose_checkpoint_is_restored_activates(
        self, client: TestClient, served, tiny_model, tmp_path: Path
    ) -> None:
        copy = copy_checkpoint(tiny_model, tmp_path)
        weights = Path(copy.path) / "weights.safetensors"
        sound = weights.read_bytes()
        weights.write_bytes(sound[:-8] + bytes(range(8)))  # damaged on disk
        bad = register_result(served.url, copy, activate=False)
        assert_problem(client.post(f"/v1/admin/models/{bad}/activate", headers=AUTH), 409)
        assert_problem(client.post(f"/v1/admin/models/{bad}/activate", headers=AUTH), 409)
        weights.write_bytes(sound)  # restored from a backup

        r = client.post(f"/v1/admin/models/{bad}/activate", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "active" and "verified again" in r.json()["note"]
        assert client.get("/v1/users/2/recommendations").json()["model_version"] == bad
        assert client.get("/v1/admin/models", headers=AUTH).json()["active"] == bad

    def test_unknown_version_is_404(self, client: TestClient) -> None:
        assert_problem(client.post("/v1/admin/models/4242/activate", headers=AUTH), 404, "4242")

    def test_learning_curve_png(
        self, client: TestClient, served, tiny_model, tmp_path: Path
    ) -> None:
        r = client.get(f"/v1/admin/models/{served.version_id}/learning-curve.png", headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG")
        copy = copy_checkpoint(tiny_model, tmp_path)
        for png in Path(copy.path).glob("*.png"):
            png.unlink()
        bare = register_result(served.url, copy, activate=False)
        assert_problem(
            client.get(f"/v1/admin/models/{bare}/learning-curve.png", headers=AUTH),
            404,
            "learning-curve",
        )
        assert (
            client.get(f"/v1/admin/models/{served.version_id}/learning-curve.png").status_code
            == 401
        )


@pytest.mark.parametrize("path", ["/v1/admin/jobs", "/v1/admin/models"])
def test_admin_reads_work_without_a_model(bare_client: TestClient, path: str) -> None:
    assert bare_client.get(path, headers=AUTH).status_code == 200
