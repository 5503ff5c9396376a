"""Named statements over the ``workers`` table: each worker process reports its state there."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import WorkerProcess, WorkerState

# Rows of workers gone for this long are deleted when a worker starts.
KEEP_GONE = timedelta(days=1)


def started(session: Session, worker_id: str, now: datetime, restarts: int) -> None:
    """Record a worker process that just started (idle), forgetting long-gone ones."""
    session.execute(
        delete(WorkerProcess).where(
            or_(WorkerProcess.id == worker_id, WorkerProcess.heartbeat_at < now - KEEP_GONE)
        )
    )
    session.add(
        WorkerProcess(
            id=worker_id,
            state=WorkerState.idle.value,
            started_at=now,
            heartbeat_at=now,
            restarts=restarts,
        )
    )
    session.flush()


def beat(session: Session, worker_id: str, now: datetime, job_id: int | None) -> None:
    """The worker is alive: idle (``job_id`` None) or busy with ``job_id``."""
    state = WorkerState.idle if job_id is None else WorkerState.busy
    session.execute(
        update(WorkerProcess)
        .where(WorkerProcess.id == worker_id)
        .values(heartbeat_at=now, state=state.value, job_id=job_id)
    )


def stopped(session: Session, worker_id: str, now: datetime, note: str | None = None) -> None:
    """The worker exited (or its supervisor found it dead)."""
    values: dict[str, Any] = {"state": WorkerState.stopped.value, "stopped_at": now, "job_id": None}
    if note is not None:
        values["note"] = note
    session.execute(update(WorkerProcess).where(WorkerProcess.id == worker_id).values(**values))


def alive(session: Session, fresh_after: datetime) -> list[WorkerProcess]:
    """Workers not stopped whose heartbeat is newer than ``fresh_after``, newest first."""
    stmt = (
        select(WorkerProcess)
        .where(
            WorkerProcess.state != WorkerState.stopped.value,
            WorkerProcess.heartbeat_at >= fresh_after,
        )
        .order_by(WorkerProcess.started_at.desc())
    )
    return list(session.scalars(stmt))


def latest_stopped(session: Session) -> WorkerProcess | None:
    """The worker that stopped last (for why it stopped)."""
    stmt = (
        select(WorkerProcess)
        .where(WorkerProcess.state == WorkerState.stopped.value)
        .order_by(WorkerProcess.stopped_at.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()
