"""Typed dependencies: ``SessionDep``, ``SettingsDep``, ``StateDep``, ``AdminDep``.

Every dependency here is ``async`` so FastAPI runs it on the event loop rather than sending it
to the thread pool: the request path stays on one thread, where torch and the GIL do not
contend (see the serving notes).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.config import Settings
from app.observability import Metrics
from app.services.errors import (
    AdminDisabledError,
    NotAuthenticatedError,
    NotStoredError,
    ServiceError,
)
from app.serving import MicroBatcher, ModelHolder, ServingState

log = logging.getLogger("movierec.api")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _commit(session: Session) -> None:
    """Commit, or raise ``NotStoredError`` (a 503) when the store refuses the commit."""
    try:
        session.commit()
    except SQLAlchemyError as exc:
        log.error("commit failed, the request's changes are not stored: %s", exc)
        session.rollback()
        raise NotStoredError(
            "the change was not stored: the database failed to commit it; retry shortly"
        ) from exc


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request; the request owns the transaction (commit on success).

    Declared with ``scope="function"`` (``SessionDep``): the commit runs when the endpoint
    returns and before the response is sent, so a response never acknowledges a write that
    is not stored, and a failed commit becomes the request's answer (503, nothing stored).
    """
    session: Session = request.app.state.sessions()
    try:
        yield session
        _commit(session)
    except ServiceError as exc:
        if exc.commit_changes:
            _commit(session)
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def get_state(request: Request) -> ServingState | None:
    """The serving state at the start of the request (kept for the whole request)."""
    return request.app.state.holder.state


# Declare the schemes in the OpenAPI document (the "Authorize" button of /docs); the checks
# and their problem+json answers are ours (auto_error=False).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="The admin token, `MOVIEREC_ADMIN_TOKEN`.",
)
api_key_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="One of the API keys, `MOVIEREC_API_KEYS` (user data and recommendations; "
    "only when keys are configured).",
)


def api_key_valid(keys: tuple[str, ...], authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries one of ``keys`` (constant-time compares;
    every key is compared, so the time does not tell which one came close)."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    token = given.strip().encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key.encode())
    return found


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key_scheme)],
) -> None:
    """User data and recommendations: a key of ``MOVIEREC_API_KEYS`` when any is set."""
    keys = request.app.state.api_keys
    if not keys:
        return
    if credentials is None or not credentials.credentials:
        raise NotAuthenticatedError(
            "this route needs an API key: send Authorization: Bearer <key>", realm="api"
        )
    if not api_key_valid(keys, f"Bearer {credentials.credentials}"):
        raise NotAuthenticatedError("the API key is not valid", realm="api")


def is_admin(request: Request) -> bool:
    """Whether the request carries the admin token (never true while none is configured)."""
    configured = request.app.state.settings.admin_token
    if configured is None or not configured.get_secret_value():
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), configured.get_secret_value().encode()
    )


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """Admin routes: a bearer token compared in constant time; all refused when none is set."""
    configured = request.app.state.settings.admin_token
    if configured is None or not configured.get_secret_value():
        raise AdminDisabledError("admin is disabled: set MOVIEREC_ADMIN_TOKEN to enable it")
    if credentials is None or not credentials.credentials:
        raise NotAuthenticatedError("missing bearer token in the Authorization header")
    given = credentials.credentials.strip().encode()
    if not hmac.compare_digest(given, configured.get_secret_value().encode()):
        raise NotAuthenticatedError("the bearer token is not valid")


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
StateDep = Annotated[ServingState | None, Depends(get_state)]
AdminDep = Depends(require_admin)
ApiKeyDep = Depends(require_api_key)
