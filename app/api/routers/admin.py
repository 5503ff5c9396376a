"""``/v1/admin``: retraining jobs and model versions, behind the admin bearer token."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from app.api.deps import AdminDep, HolderDep, SessionDep, SettingsDep
from app.api.schemas.admin import JobOut, JobPage, ModelList, ModelOut, RetrainRequest
from app.api.schemas.common import CANONICAL, MAX_ID, problem_responses
from app.db.models import ModelVersion, TrainingJob
from app.services import jobs as jobs_service
from app.services import models as models_service
from app.services.errors import CheckpointRefusedError

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep])
VersionId = Annotated[int, Path(ge=0, le=MAX_ID, description="A model version id."), CANONICAL]
JobId = Annotated[int, Path(ge=0, le=MAX_ID, description="A training job id."), CANONICAL]
AUTH = (401, 403)


def job_out(job: TrainingJob) -> JobOut:
    return JobOut(
        id=job.id,
        status=job.status,
        params=job.params or {},
        progress=job.progress or {},
        error=job.error,
        message=job.message,
        model_version_id=job.model_version_id,
        worker_id=job.worker_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
    )


def model_out(version: ModelVersion) -> ModelOut:
    manifest: dict[str, Any] = version.manifest or {}
    name = manifest.get("version_name") or manifest.get("version")
    return ModelOut(
        id=version.id,
        status=version.status,
        is_active=version.is_active,
        created_at=version.created_at,
        activated_at=version.activated_at,
        path=version.path,
        sha256=version.sha256,
        metrics=version.metrics or {},
        note=version.note,
        version_name=None if name is None else str(name),
    )


@router.post(
    "/retrain",
    status_code=202,
    summary="Queue a retraining (run by a worker process)",
    responses=problem_responses(*AUTH, 400, 409, 413, 422, 503),
)
async def retrain(
    session: SessionDep, settings: SettingsDep, body: RetrainRequest | None = None
) -> JobOut:
    params = {} if body is None else body.model_dump(exclude_none=True)
    job = jobs_service.enqueue_retrain(session, params, settings.heartbeat_timeout_seconds)
    return job_out(job)


@router.get("/jobs", summary="Training jobs", responses=problem_responses(*AUTH, 422, 503))
async def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size."), CANONICAL] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Jobs to skip."), CANONICAL] = 0,
) -> JobPage:
    jobs, total = jobs_service.list_jobs(
        session, limit=limit, offset=offset, heartbeat_timeout=settings.heartbeat_timeout_seconds
    )
    return JobPage(items=[job_out(j) for j in jobs], total=total)


@router.get(
    "/jobs/{job_id}", summary="One training job", responses=problem_responses(*AUTH, 404, 422, 503)
)
async def get_job(session: SessionDep, settings: SettingsDep, job_id: JobId) -> JobOut:
    return job_out(jobs_service.get_job(session, job_id, settings.heartbeat_timeout_seconds))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a queued or running training job",
    description="A queued job is never run; a running one stops at its worker's next heartbeat "
    "(`MOVIEREC_HEARTBEAT_SECONDS`) and mini-batch, and registers nothing. A job that already "
    "ended is a conflict.",
    responses=problem_responses(*AUTH, 404, 409, 422, 503),
)
async def cancel_job(session: SessionDep, settings: SettingsDep, job_id: JobId) -> JobOut:
    job = jobs_service.cancel_job(session, job_id, settings.heartbeat_timeout_seconds)
    return job_out(job)


@router.get("/models", summary="Model versions", responses=problem_responses(*AUTH, 503))
async def list_models(session: SessionDep) -> ModelList:
    versions = models_service.list_models(session)
    active = next((v.id for v in versions if v.is_active), None)
    return ModelList(items=[model_out(v) for v in versions], active=active)


@router.post(
    "/models/{version}/activate",
    summary="Activate a version (also a rollback) after verifying its checkpoint",
    responses=problem_responses(*AUTH, 404, 409, 422, 503),
)
async def activate_model(session: SessionDep, holder: HolderDep, version: VersionId) -> ModelOut:
    await asyncio.to_thread(
        models_service.check_checkpoint, session, version, models_service.verify_checkpoint
    )
    activated = models_service.activate_model(session, version)
    session.commit()
    await holder.refresh_async()  # this process swaps now; the others at their next poll
    failure = holder.last_failure
    if failure is not None and failure.version_id == version:
        raise CheckpointRefusedError(
            f"model version {version} failed to load and was marked failed: {failure.error}",
            version=version,
        )
    return model_out(activated)


@router.get(
    "/models/{version}/learning-curve.png",
    summary="The learning curve written beside the checkpoint",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}}},
        **problem_responses(*AUTH, 404, 422, 503),
    },
)
async def learning_curve(session: SessionDep, version: VersionId) -> FileResponse:
    return FileResponse(models_service.learning_curve(session, version), media_type="image/png")
