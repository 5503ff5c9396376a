"""Statements whose SQL differs between the store's two dialects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_unless_present(
    session: Session, model: Any, values: Mapping[str, Any], keys: Sequence[str]
) -> bool:
    """``INSERT … ON CONFLICT (keys) DO NOTHING``, one atomic statement on both dialects;
    True when the row was inserted, False when a row with the same keys was there (or was
    committed meanwhile by a concurrent transaction: PostgreSQL waits for it, SQLite's single
    writer has already serialised it)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt: Any = (
        insert(model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(literal_column("1"))
    )
    return session.execute(stmt).first() is not None
