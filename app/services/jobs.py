"""Training-job use cases: enqueue a retrain, list and read jobs, fail jobs whose worker died.

The web process only writes job rows; a worker process (``movierec worker``) runs them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import JobStatus, TrainingJob, utcnow
from app.repositories import jobs as jobs_repo
from app.repositories import workers as workers_repo
from app.services.errors import ConflictError, NotFoundError


def job_summary(job: TrainingJob) -> dict[str, Any]:
    """The fields a client needs to follow a job (used in problem details too)."""
    return {"id": job.id, "status": job.status, "progress": job.progress or {}}


def fail_stale_jobs(session: Session, timeout_seconds: float) -> list[int]:
    """Mark running jobs whose heartbeat is older than ``timeout_seconds`` failed; their ids."""
    now = utcnow()
    return jobs_repo.fail_stale_running(session, now - timedelta(seconds=timeout_seconds), now)


def enqueue_retrain(
    session: Session, params: dict[str, Any], heartbeat_timeout: float
) -> TrainingJob:
    """Queue a training job; a job already queued or running is a conflict.

    Enqueuers are serialised (``jobs_repo.lock_queue``) so two concurrent requests cannot both
    queue one. Jobs of dead workers are failed first, so they do not block a new one forever.
    """
    jobs_repo.lock_queue(session)
    fail_stale_jobs(session, heartbeat_timeout)
    open_jobs = jobs_repo.open_jobs(session)
    if open_jobs:
        job = open_jobs[0]
        raise ConflictError(
            f"training job {job.id} is already {job.status}; one training runs at a time",
            job=job_summary(job),
        )
    job = TrainingJob(
        status=JobStatus.queued.value, params=params, progress={}, created_at=utcnow()
    )
    session.add(job)
    session.flush()
    return job


def list_jobs(
    session: Session, *, limit: int, offset: int, heartbeat_timeout: float
) -> tuple[list[TrainingJob], int]:
    """Jobs newest first; running jobs whose worker died are marked failed on the way."""
    fail_stale_jobs(session, heartbeat_timeout)
    return jobs_repo.page(session, limit=limit, offset=offset)


def get_job(session: Session, job_id: int, heartbeat_timeout: float) -> TrainingJob:
    fail_stale_jobs(session, heartbeat_timeout)
    job = jobs_repo.get(session, job_id)
    if job is None:
        raise NotFoundError(f"training job {job_id} does not exist", job_id=job_id)
    return job


def cancel_job(session: Session, job_id: int, heartbeat_timeout: float) -> TrainingJob:
    """Cancel a queued or running job (a running one stops at its worker's next heartbeat and
    mini-batch); a job that already ended is a conflict."""
    job = get_job(session, job_id, heartbeat_timeout)
    if not jobs_repo.cancel(session, job_id, utcnow()):
        session.refresh(job)
        raise ConflictError(
            f"training job {job_id} already ended ({job.status}); only queued or running jobs "
            "can be cancelled",
            job=job_summary(job),
        )
    session.refresh(job)
    return job


def worker_summary(session: Session, heartbeat_timeout: float) -> dict[str, Any]:
    """The training workers as ``/readyz`` shows them: how many are alive and busy, the
    restarts of the newest one by ``movierec serve`` and why the last one stopped."""
    now = utcnow()
    alive = workers_repo.alive(session, now - timedelta(seconds=heartbeat_timeout))
    summary: dict[str, Any] = {
        "alive": len(alive),
        "busy": sum(1 for w in alive if w.state == "busy"),
        "restarts": alive[0].restarts if alive else 0,
    }
    last = workers_repo.latest_stopped(session)
    if last is not None and last.note:
        summary["last_exit"] = last.note
    return summary
