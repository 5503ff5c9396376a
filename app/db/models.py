"""ORM models: the table contract of the store (see the architecture notes)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.db.base import Base
from app.db.search import search_key


def utcnow() -> datetime:
    return datetime.now(UTC)


class Movie(Base):
    __tablename__ = "movies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(512))
    year: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Genres joined with "|" (MovieLens style); "" when unknown.
    genres: Mapped[str] = mapped_column(String(512), default="", server_default="")
    # search_key(title): what title search compares (see app.db.search).
    search_title: Mapped[str] = mapped_column(Text, default="", server_default="")
    # How many ratings the movie has: the popularity that orders search matches. Recounted by
    # every import, kept up to date by the API's rating writes.
    rating_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @validates("title")
    def _keep_search_title(self, _key: str, title: str) -> str:
        self.search_title = search_key(title)
        return title


class CatalogueVersion(Base):
    """One row (id 1) whose version the database bumps on every change to ``movies`` (triggers
    of migration 0004): API processes reload their in-memory catalogue when it moves."""

    __tablename__ = "catalogue_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (
        CheckConstraint("rating >= 0.5 AND rating <= 5", name="rating_range"),
        Index("ix_ratings_movie_id", "movie_id"),
        # Covering: a user's ratings are read from the index alone (the hot route's query).
        Index("ix_ratings_user_movie_rating", "user_id", "movie_id", "rating"),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    movie_id: Mapped[int] = mapped_column(
        ForeignKey("movies.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[float] = mapped_column(Float)
    rated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


class ModelStatus(enum.StrEnum):
    registered = "registered"  # written and verified, not serving
    active = "active"  # the one version serving
    retired = "retired"  # served before, replaced by another
    failed = "failed"  # refused on load or verification


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(
            "status IN ('registered', 'active', 'retired', 'failed')", name="status_valid"
        ),
        # At most one active version, enforced by the database itself.
        Index(
            "uq_model_versions_one_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.registered.value)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status_valid",
        ),
        Index("ix_training_jobs_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )


class WorkerState(enum.StrEnum):
    idle = "idle"  # polling for queued jobs
    busy = "busy"  # running a job
    stopped = "stopped"  # exited (cleanly, or found dead by its supervisor)


class WorkerProcess(Base):
    """A training worker process, as it reports itself (``/readyz`` and ``/metrics`` read it)."""

    __tablename__ = "workers"
    __table_args__ = (CheckConstraint("state IN ('idle', 'busy', 'stopped')", name="state_valid"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the job's worker_id
    state: Mapped[str] = mapped_column(String(16), default=WorkerState.idle.value)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Restarts by `movierec serve` before this process, and why the previous one ended.
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
