"""Health and readiness schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str = Field(description="`ok` while the process runs.")


class Readiness(BaseModel):
    status: str = Field(description="`ready`, or `not ready` when a part failed.")
    database: dict[str, Any] = Field(description="`ok` and the error when it is not.")
    model: dict[str, Any] = Field(
        description="Loaded version, the device it runs on, the weights' precision and the "
        "last load failure."
    )
    worker: dict[str, Any] = Field(
        default_factory=dict,
        description="Training workers (not needed to be ready): `alive` and `busy` (heartbeat "
        "within the timeout), `restarts` of the newest one by `movierec serve`, and "
        "`last_exit`, how the last worker that stopped ended.",
    )


class Ping(BaseModel):
    ping: str = Field(description="Always `pong`: the cost of the HTTP stack alone.")
