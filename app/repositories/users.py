"""Named statements over the ``users`` table."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import User, utcnow
from app.repositories.statements import insert_unless_present


def exists(session: Session, user_id: int) -> bool:
    return session.scalar(select(User.id).where(User.id == user_id)) is not None


def ensure(session: Session, user_id: int) -> bool:
    """Create the user unless it exists (users are created by their first rating), in one
    atomic statement: concurrent first ratings of a new user in several API processes all
    succeed. True when this call created it."""
    return insert_unless_present(session, User, {"id": user_id, "created_at": utcnow()}, ["id"])
