"""Model-version use cases for the admin API: list, activate (or roll back), learning curve.

Activation verifies the checkpoint first (format version and sha256 of the weights): a version
that fails is marked failed and refused, and the active version is left as it was; a version
marked failed earlier is verified again and activated when its checkpoint is sound now.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from app.db.models import ModelStatus, ModelVersion
from app.services import registry
from app.services.errors import CheckpointRefusedError, NotFoundError

Verifier = Callable[[str], None]


def verify_checkpoint(path: str) -> None:
    """Read the checkpoint as serving would and check its integrity; raises on failure."""
    from ml.checkpoint import load

    load(Path(path))


def list_models(session: Session) -> list[ModelVersion]:
    return registry.list_versions(session)


def get_model(session: Session, version_id: int) -> ModelVersion:
    version = registry.get_version(session, version_id)
    if version is None:
        raise NotFoundError(f"model version {version_id} does not exist", version=version_id)
    return version


def check_checkpoint(session: Session, version_id: int, verify: Verifier) -> ModelVersion:
    """Verify a version's checkpoint; on failure mark it failed and raise (changes kept).

    A version marked failed before is verified again: when its checkpoint is sound now (the
    file was restored, the disk came back), the mark is lifted and it may be activated.
    The verification reads files only, so callers run this in a thread.
    """
    version = get_model(session, version_id)
    try:
        verify(version.path)
    except Exception as exc:
        reason = f"checkpoint failed verification: {type(exc).__name__}: {exc}"
        registry.mark_failed(session, version_id, reason[:2000])
        raise CheckpointRefusedError(
            f"model version {version_id} {reason}", version=version_id, commit_changes=True
        ) from exc
    if version.status == ModelStatus.failed.value:
        registry.clear_failure(session, version_id)
    return version


def activate_model(session: Session, version_id: int) -> ModelVersion:
    """Make a verified version the active one (also a rollback); every process swaps to it."""
    try:
        return registry.activate(session, version_id)
    except registry.RegistryError as exc:
        raise CheckpointRefusedError(str(exc), version=version_id) from exc


def learning_curve(session: Session, version_id: int) -> Path:
    """The learning-curve PNG written beside the version's checkpoint."""
    version = get_model(session, version_id)
    folder = Path(version.path)
    folder = folder if folder.is_dir() else folder.parent
    candidates = sorted(folder.glob("*.png")) if folder.is_dir() else []
    preferred = [p for p in candidates if "curve" in p.name] or candidates
    if not preferred:
        raise NotFoundError(
            f"model version {version_id} has no learning-curve image", version=version_id
        )
    return preferred[0]
