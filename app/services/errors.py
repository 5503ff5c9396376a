"""Errors raised by the services: use-case failures, free of HTTP.

The API layer maps each class to a status code and an ``application/problem+json`` body; the
worker and the command line print them. ``detail`` always names the offending field or id.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A use case cannot be completed; ``detail`` says why in words a client can act on."""

    title = "Request cannot be completed"
    # True when the changes made before the error must still be committed (e.g. a version
    # marked failed while refusing it); the unit of work that catches the error honours it.
    commit_changes = False

    def __init__(self, detail: str, *, commit_changes: bool = False, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.commit_changes = commit_changes


class NotFoundError(ServiceError):
    """The user, movie, job or model version named in the request does not exist."""

    title = "Not found"


class InvalidInputError(ServiceError):
    """The request is well-formed but names things that cannot be used (e.g. unknown movies)."""

    title = "Invalid input"


class ConflictError(ServiceError):
    """The request conflicts with the current state (a training already queued or running)."""

    title = "Conflict"


class ModelUnavailableError(ServiceError):
    """No model is loaded in this process yet, so nothing can be scored."""

    title = "No model loaded"


class NotStoredError(ServiceError):
    """The store refused to commit the request's changes: nothing of the request is stored."""

    title = "Not stored"


class CheckpointRefusedError(ServiceError):
    """A model version's checkpoint failed verification and will not serve."""

    title = "Checkpoint refused"


class NotAuthenticatedError(ServiceError):
    """Admin credentials are missing or wrong."""

    title = "Not authenticated"


class AdminDisabledError(ServiceError):
    """No admin token is configured, so every admin call is refused."""

    title = "Admin disabled"
