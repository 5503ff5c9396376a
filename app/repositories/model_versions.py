"""Named statements over the ``model_versions`` table used by the serving path."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelVersion


def active_pointer(session: Session) -> tuple[int, str, datetime | None] | None:
    """``(id, path, activated_at)`` of the active version, or None: the cheap query each
    process polls. ``activated_at`` tells a new activation of a version from the one before."""
    row = session.execute(
        select(ModelVersion.id, ModelVersion.path, ModelVersion.activated_at).where(
            ModelVersion.is_active
        )
    ).one_or_none()
    return None if row is None else (int(row[0]), str(row[1]), row[2])
