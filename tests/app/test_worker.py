"""The training worker, in process: claims, heartbeats, stale jobs, training and the gate."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.db.models import JobStatus, ModelVersion, TrainingJob, utcnow
from app.repositories import jobs as jobs_repo
from app.services import registry
from app.worker import Heartbeat, JobInterrupted, Worker
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import app_settings, copy_checkpoint, register_result


def add_job(db, **values) -> int:
    values.setdefault("status", JobStatus.queued.value)
    values.setdefault("params", {})
    values.setdefault("progress", {})
    with Session(db.engine) as session, session.begin():
        job = TrainingJob(**values)
        session.add(job)
        session.flush()
        return job.id


def job(db, job_id: int) -> TrainingJob:
    with Session(db.engine, expire_on_commit=False) as session:
        found = session.get(TrainingJob, job_id)
        assert found is not None
        return found


def test_a_job_is_claimed_by_exactly_one_of_many_workers(env, tmp_path: Path) -> None:
    job_id = add_job(env)
    workers = [Worker(app_settings(env.url, tmp_path), worker_id=f"w{i}") for i in range(4)]
    claims: list[int | None] = []
    barrier = threading.Barrier(len(workers))

    def claim(worker: Worker) -> None:
        barrier.wait()
        claims.append(worker.claim())

    threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims, key=lambda c: c is None)[0] == job_id
    assert claims.count(job_id) == 1 and claims.count(None) == 3
    claimed = job(env, job_id)
    assert claimed.status == "running" and claimed.worker_id in {"w0", "w1", "w2", "w3"}
    assert claimed.started_at is not None and claimed.heartbeat_at is not None


def test_the_oldest_queued_job_is_claimed_first(env, tmp_path: Path) -> None:
    first, second = add_job(env), add_job(env)
    worker = Worker(app_settings(env.url, tmp_path), worker_id="w")
    assert (worker.claim(), worker.claim(), worker.claim()) == (first, second, None)


def test_running_jobs_without_heartbeat_are_failed(env, tmp_path: Path) -> None:
    old, fresh = utcnow() - timedelta(seconds=120), utcnow()
    stale = add_job(env, status="running", started_at=old, heartbeat_at=old, worker_id="x")
    alive = add_job(env, status="running", started_at=old, heartbeat_at=fresh, worker_id="y")
    Worker(app_settings(env.url, tmp_path, heartbeat_timeout_seconds=60)).fail_stale()
    assert job(env, stale).status == "failed" and "heartbeat" in (job(env, stale).error or "")
    assert job(env, alive).status == "running"


def test_heartbeat_thread_beats_and_notices_a_lost_job(env, tmp_path: Path) -> None:
    worker = Worker(app_settings(env.url, tmp_path), worker_id="w")
    job_id = add_job(env)
    assert worker.claim() == job_id
    first_beat = job(env, job_id).heartbeat_at
    with Heartbeat(worker.sessions, job_id, "w", every=0.05) as heartbeat:
        deadline = time.monotonic() + 5
        while job(env, job_id).heartbeat_at == first_beat and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job(env, job_id).heartbeat_at > first_beat  # type: ignore[operator]
        with Session(env.engine) as session, session.begin():
            session.get(TrainingJob, job_id).status = "failed"  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while not heartbeat.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert heartbeat.lost.is_set()


def test_run_trains_registers_activates_and_records_progress(
    seeded, tmp_path: Path, capfd, caplog
) -> None:
    job_id = add_job(seeded, params={"epochs": 1})
    settings = app_settings(seeded.url, tmp_path, heartbeat_seconds=0.1)
    with caplog.at_level(logging.INFO, logger="movierec.worker"):
        assert Worker(settings, worker_id="w").run(once=True) == 1
    done = job(seeded, job_id)
    assert done.status == "succeeded", done.error
    assert done.progress["epoch"] == 1 and done.progress["epochs"] == 1
    assert "ndcg@10" in done.progress["val"]
    # The last phase, finished, with its elapsed time: what the admin page shows.
    assert done.progress["phase"] == "registering" and done.progress["finished"] is True
    assert done.progress["elapsed_s"] >= 0
    logged = [r.getMessage() for r in caplog.records]
    for phase in ("loading", "tuning", "item codes", "epochs", "finishing", "writing"):
        assert f"job {job_id}: {phase} done in" in " | ".join(logged), logged
    assert "\r" not in capfd.readouterr().err, "no progress-bar frames in the worker's output"
    assert done.finished_at is not None and "activated" in (done.message or "")
    with Session(seeded.engine) as session:
        version = session.get(ModelVersion, done.model_version_id)
        assert version is not None and version.is_active
        assert Path(version.path).is_relative_to(settings.model_dir)


def test_a_worse_model_is_kept_inactive_with_the_reason(seeded, tiny_model, tmp_path: Path) -> None:
    active = register_result(seeded.url, tiny_model.result)
    # One epoch of the tutorial's model rates far worse than the active default model.
    job_id = add_job(seeded, params={"epochs": 1, "preset": "seed"})
    Worker(app_settings(seeded.url, tmp_path), worker_id="w").run(once=True)
    done = job(seeded, job_id)
    assert done.status == "succeeded", done.error
    message = done.message or ""
    assert "not activated" in message and "rmse" in message and "worse" in message
    assert "on the same held-out slice" in message
    with Session(seeded.engine) as session:
        assert registry.active_version(session).id == active  # type: ignore[union-attr]
        version = session.get(ModelVersion, done.model_version_id)
        assert version is not None and version.status == "registered"
    gate = version.metrics["gate"]
    assert gate["active"]["sha256"] == tiny_model.result.sha256
    new_rmse, old_rmse = gate["new"]["rmse"], gate["active"]["rmse"]
    assert new_rmse > old_rmse
    assert f"rmse {new_rmse:.4f} against the active model's {old_rmse:.4f}" in message


def test_the_gate_scores_the_active_model_on_the_new_ones_slice(
    seeded, tiny_model, tmp_path: Path
) -> None:
    """The active model's own recorded figures (here unbeatable: measured on another slice)
    are not what the gate compares: it scores the active checkpoint on the new model's
    held-out slice and compares the two figures found there."""
    best = tiny_model.result
    recorded = {"validation": {"ndcg@10": 1.0, "rmse": 0.0}}
    register_result(seeded.url, type(best)(best.path, best.sha256, best.manifest, recorded))
    job_id = add_job(seeded, params={"epochs": 1})
    settings = app_settings(seeded.url, tmp_path, activation_tolerance=0.5)
    Worker(settings, worker_id="w").run(once=True)
    done = job(seeded, job_id)
    assert done.status == "succeeded", done.error
    message = done.message or ""
    assert f"model version {done.model_version_id} activated" in message, message
    assert "on the same held-out slice" in message and "ndcg@10" in message
    with Session(seeded.engine) as session:
        version = session.get(ModelVersion, done.model_version_id)
        assert version is not None and version.is_active
        gate = version.metrics["gate"]
    assert gate["held_out_ratings"] == gate["new"]["n_ratings"] == gate["active"]["n_ratings"]


def test_a_failing_job_is_marked_failed_with_the_error(seeded, tmp_path: Path) -> None:
    job_id = add_job(seeded, params={"preset": "no-such-preset"})
    Worker(app_settings(seeded.url, tmp_path), worker_id="w").run(once=True)
    failed = job(seeded, job_id)
    assert failed.status == "failed" and "no-such-preset" in (failed.error or "")
    assert failed.finished_at is not None


@pytest.mark.parametrize(
    ("new", "active", "activate", "reason"),
    [
        ({"validation": {"rmse": 0.9}}, None, True, "no active model"),
        ({"validation": {}}, None, True, "no active model; not validated"),
        ({"validation": {}}, {"validation": {"rmse": 0.9}}, False,
         "not validated, unlike the active model"),
        ({"validation": {}}, {"validation": {}}, True, "not validated, nor is the active model"),
        ({"validation": {"rmse": 0.9}}, {"validation": {}}, True,
         "validation metrics not worse (no figures to compare, on each model's own"),
        ({"validation": {"rmse": 0.95}}, {"validation": {"rmse": 0.9}}, False,
         "validation rmse worse (rmse 0.9500 against the active model's 0.9000, on each"),
    ],
)  # fmt: skip
def test_activation_gate_and_unvalidated_models(
    new: dict, active: dict | None, activate: bool, reason: str
) -> None:
    gate = registry.activation_gate(new, active, tolerance=0.0)
    assert gate.activate == activate
    assert gate.reason.startswith(reason), gate.reason


def test_a_job_cancelled_after_training_registers_nothing(
    served, tiny_model, tmp_path: Path
) -> None:
    worker = Worker(app_settings(served.url, tmp_path), worker_id="w")
    job_id = add_job(served)
    assert worker.claim() == job_id
    trained = copy_checkpoint(tiny_model, tmp_path / "out")  # what training just wrote
    with Session(served.engine) as session, session.begin():
        assert jobs_repo.cancel(session, job_id, utcnow())
    with pytest.raises(JobInterrupted, match="cancelled"):
        worker._register(job_id, trained)
    with Session(served.engine) as session:
        assert [v.id for v in registry.list_versions(session)] == [served.version_id]
    assert job(served, job_id).status == "cancelled"


def test_a_stopping_worker_interrupts_at_the_next_check(env, tmp_path: Path) -> None:
    worker = Worker(app_settings(env.url, tmp_path), worker_id="w")
    job_id = add_job(env)
    assert worker.claim() == job_id
    with Heartbeat(worker.sessions, job_id, "w", every=10) as heartbeat:
        worker.check_stop(heartbeat)  # nothing asked: no interruption
        worker.stop("the worker received SIGTERM")
        with pytest.raises(JobInterrupted, match="SIGTERM"):
            worker.check_stop(heartbeat)


def test_a_worker_whose_parent_is_gone_interrupts(env, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MOVIEREC_WORKER_PARENT_PID", str(os.getppid() + 1))
    worker = Worker(app_settings(env.url, tmp_path), worker_id="w")
    job_id = add_job(env)
    assert worker.claim() == job_id
    with (
        Heartbeat(worker.sessions, job_id, "w", every=10) as heartbeat,
        pytest.raises(JobInterrupted, match="is gone"),
    ):
        worker.check_stop(heartbeat)
