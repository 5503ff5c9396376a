"""Named statements over the ``training_jobs`` table, including the atomic claim."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import JobStatus, TrainingJob

OPEN_STATUSES = (JobStatus.queued.value, JobStatus.running.value)
# Key of the PostgreSQL advisory lock that serialises "enqueue a retrain" transactions.
ENQUEUE_LOCK_KEY = 0x6D6F7669  # "movi"


def lock_queue(session: Session) -> None:
    """Serialise enqueuers for the rest of the transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: a write that takes the database's
    single writer lock now (an UPDATE that matches nothing), so the check that follows sees any
    job another transaction committed.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(ENQUEUE_LOCK_KEY)))
    else:
        session.execute(update(TrainingJob).where(TrainingJob.id == -1).values(status="queued"))


def open_jobs(session: Session) -> list[TrainingJob]:
    """Jobs queued or running, oldest first."""
    stmt = select(TrainingJob).where(TrainingJob.status.in_(OPEN_STATUSES)).order_by(TrainingJob.id)
    return list(session.scalars(stmt))


def page(session: Session, *, limit: int, offset: int) -> tuple[list[TrainingJob], int]:
    """Jobs newest first and their total count."""
    stmt = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit).offset(offset)
    total = session.scalar(select(func.count()).select_from(TrainingJob)) or 0
    return list(session.scalars(stmt)), int(total)


def get(session: Session, job_id: int) -> TrainingJob | None:
    return session.get(TrainingJob, job_id)


def counts_by_status(session: Session) -> dict[str, int]:
    stmt = select(TrainingJob.status, func.count()).group_by(TrainingJob.status)
    return {str(s): int(c) for s, c in session.execute(stmt)}


def claim_next(session: Session, worker_id: str, now: datetime) -> int | None:
    """Atomically move the oldest queued job to ``running`` for this worker; its id or None.

    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers never block on or
    claim the same row. SQLite: a compare-and-set ``UPDATE ... WHERE id = ? AND
    status = 'queued'``; a lost race updates no row and the next candidate is tried.
    """
    running = {
        "status": JobStatus.running.value,
        "worker_id": worker_id,
        "started_at": now,
        "heartbeat_at": now,
    }
    if session.get_bind().dialect.name == "postgresql":
        stmt = (
            select(TrainingJob.id)
            .where(TrainingJob.status == JobStatus.queued.value)
            .order_by(TrainingJob.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        job_id = session.scalar(stmt)
        if job_id is None:
            return None
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(**running))
        return int(job_id)
    candidates = session.scalars(
        select(TrainingJob.id)
        .where(TrainingJob.status == JobStatus.queued.value)
        .order_by(TrainingJob.id)
        .limit(5)
    ).all()
    for job_id in candidates:
        result = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued.value)
            .values(**running)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return int(job_id)
    return None


def fail_stale_running(session: Session, older_than: datetime, now: datetime) -> list[int]:
    """Mark running jobs whose heartbeat is older than ``older_than`` failed; their ids."""
    stale = (TrainingJob.status == JobStatus.running.value) & (
        func.coalesce(TrainingJob.heartbeat_at, TrainingJob.started_at) < older_than
    )
    ids = [int(i) for i in session.scalars(select(TrainingJob.id).where(stale))]
    if ids:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id.in_(ids), TrainingJob.status == JobStatus.running.value)
            .values(
                status=JobStatus.failed.value,
                finished_at=now,
                error="the worker stopped beating its heartbeat (it died or hung)",
            )
        )
    return ids


def beat(session: Session, job_id: int, worker_id: str, now: datetime) -> bool:
    """Refresh a running job's heartbeat; False when the job is no longer this worker's."""
    result = session.execute(
        update(TrainingJob)
        .where(
            TrainingJob.id == job_id,
            TrainingJob.worker_id == worker_id,
            TrainingJob.status == JobStatus.running.value,
        )
        .values(heartbeat_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _owned(job_id: int, worker_id: str):
    """Rows of this job while it is running for this worker (compare-and-set guard)."""
    return (
        (TrainingJob.id == job_id)
        & (TrainingJob.worker_id == worker_id)
        & (TrainingJob.status == JobStatus.running.value)
    )


def record_progress(
    session: Session, job_id: int, worker_id: str, progress: dict[str, Any], now: datetime
) -> bool:
    """Store the latest progress and beat the heartbeat; False when the job is not ours."""
    result = session.execute(
        update(TrainingJob)
        .where(_owned(job_id, worker_id))
        .values(progress=progress, heartbeat_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_final_progress(
    session: Session, job_id: int, worker_id: str, progress: dict[str, Any]
) -> bool:
    """The last progress of a job this worker has just ended as succeeded (its last phase's
    end, reported after the job's own commit); False when it did not end so."""
    result = session.execute(
        update(TrainingJob)
        .where(
            (TrainingJob.id == job_id)
            & (TrainingJob.worker_id == worker_id)
            & (TrainingJob.status == JobStatus.succeeded.value)
        )
        .values(progress=progress)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish(session: Session, job_id: int, worker_id: str, status: JobStatus, **values: Any) -> bool:
    """End a running job of this worker (succeeded or failed); False when it was not ours."""
    result = session.execute(
        update(TrainingJob).where(_owned(job_id, worker_id)).values(status=status.value, **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_result(session: Session, job_id: int, model_version_id: int, message: str) -> None:
    """The version a succeeded job registered and what became of it."""
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id)
        .values(model_version_id=model_version_id, message=message)
    )


def cancel(session: Session, job_id: int, now: datetime) -> bool:
    """Cancel a queued or running job; False when it had already ended.

    A running job's worker finds it no longer running at its next heartbeat and stops at the
    next mini-batch; nothing it trains is registered.
    """
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status.in_(OPEN_STATUSES))
        .values(
            status=JobStatus.cancelled.value,
            finished_at=now,
            message="cancelled by an admin",
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail_running_of(session: Session, worker_id: str, now: datetime, error: str) -> list[int]:
    """Mark the jobs running for ``worker_id`` failed (its process died); their ids."""
    running = (TrainingJob.worker_id == worker_id) & (TrainingJob.status == JobStatus.running.value)
    ids = [int(i) for i in session.scalars(select(TrainingJob.id).where(running))]
    if ids:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id.in_(ids), running)
            .values(status=JobStatus.failed.value, finished_at=now, error=error)
        )
    return ids
