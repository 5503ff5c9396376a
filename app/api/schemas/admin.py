"""Admin schemas: training jobs and model versions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.schemas.common import UtcDatetime, json_integer
from ml.fit.config import PRESETS

if TYPE_CHECKING:
    PresetName = str
else:
    PresetName = Literal[tuple(sorted(PRESETS))]


class RetrainRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # a boolean is not a number, nor a string

    epochs: int | None = Field(None, ge=1, le=10_000, description="Override the preset's epochs.")
    # An enum of ml.fit.config.PRESETS: an unknown preset is refused here (and the document lists
    # the names), not by the worker after the job was queued.
    preset: PresetName | None = Field(
        None, description="Training preset name (`ml.fit.config.PRESETS`); `default` when omitted."
    )

    _integers = field_validator("epochs", mode="before")(json_integer)

    @field_validator("preset", mode="before")
    @classmethod
    def _known_preset(cls, name: object) -> object:
        """Name the unknown preset and the known ones in the 422."""
        if isinstance(name, str) and name not in PRESETS:
            raise ValueError(f"unknown preset {name[:64]!r}; choose one of {sorted(PRESETS)}")
        return name


class JobOut(BaseModel):
    id: int = Field(description="Job id.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    params: dict[str, Any] = Field(description="Training overrides asked for.")
    progress: dict[str, Any] = Field(
        description="Latest progress: the phase (loading, tuning, item codes, epochs, finishing, "
        "writing, registering) with done, total (null when unknown), elapsed_s and finished; "
        "epoch, epochs, loss and validation metrics."
    )
    error: str | None = Field(description="Why the job failed, when it did.")
    message: str | None = Field(description="Outcome, e.g. why the new model was not activated.")
    model_version_id: int | None = Field(description="The version the job produced, if any.")
    worker_id: str | None = Field(description="The worker that ran the job.")
    created_at: UtcDatetime | None = Field(description="When the job was queued.")
    started_at: UtcDatetime | None = Field(description="When a worker claimed it.")
    finished_at: UtcDatetime | None = Field(description="When it ended.")
    heartbeat_at: UtcDatetime | None = Field(description="The worker's last sign of life.")


class JobPage(BaseModel):
    items: list[JobOut] = Field(description="Jobs, newest first.")
    total: int = Field(description="How many jobs there are.")


class ModelOut(BaseModel):
    id: int = Field(description="Version id (the `model_version` of responses).")
    status: str = Field(description="registered, active, retired or failed.")
    is_active: bool = Field(description="True for the one version serving.")
    created_at: UtcDatetime | None = Field(description="When the version was registered.")
    activated_at: UtcDatetime | None = Field(description="When it was last activated.")
    path: str = Field(description="Checkpoint folder.")
    sha256: str = Field(description="Checksum of the weights.")
    metrics: dict[str, Any] = Field(description="Validation metrics recorded at training.")
    note: str | None = Field(description="Why it failed, when it did.")
    version_name: str | None = Field(description="The checkpoint's own version name, if any.")


class ModelList(BaseModel):
    items: list[ModelOut] = Field(description="Versions, newest first.")
    active: int | None = Field(description="Id of the active version, if any.")
