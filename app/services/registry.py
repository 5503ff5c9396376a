"""The model registry: register checkpoints, choose and switch the active version.

Services take the session explicitly and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import ModelStatus, ModelVersion, utcnow

# Validation metrics compared before a new model replaces the active one:
# (key in the manifest's "validation" metrics, True when higher is better).
GATED_METRICS: tuple[tuple[str, bool], ...] = (("ndcg@10", True), ("rmse", False))


class RegistryError(Exception):
    """A registry operation cannot be done (unknown version, refused activation...)."""


def get_version(session: Session, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.is_active)).one_or_none()


# Manifest fields that stay in the checkpoint folder only: they grow with the catalogue.
BULKY_MANIFEST_FIELDS = ("movie_ids", "popularity")


def register_version(
    session: Session, *, path: str, sha256: str, manifest: dict[str, Any], metrics: dict[str, Any]
) -> ModelVersion:
    """Record a written, verified checkpoint as a registered (inactive) version.

    The row keeps the manifest without its per-movie arrays (the checkpoint has them all).
    """
    version = ModelVersion(
        path=path,
        sha256=sha256,
        manifest={k: v for k, v in manifest.items() if k not in BULKY_MANIFEST_FIELDS},
        metrics=metrics,
        status=ModelStatus.registered.value,
        is_active=False,
    )
    session.add(version)
    session.flush()
    return version


def activate(session: Session, version_id: int) -> ModelVersion:
    """Make ``version_id`` the one active version (also used to roll back)."""
    version = session.get(ModelVersion, version_id, with_for_update=True)
    if version is None:
        raise RegistryError(f"model version {version_id} does not exist")
    if version.status == ModelStatus.failed.value:
        raise RegistryError(f"model version {version_id} failed verification and cannot serve")
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.is_active, ModelVersion.id != version_id)
        .values(is_active=False, status=ModelStatus.retired.value)
    )
    session.flush()
    version.is_active = True
    version.status = ModelStatus.active.value
    version.activated_at = utcnow()
    session.flush()
    return version


def register_and_gate(
    session: Session,
    *,
    path: str,
    sha256: str,
    manifest: dict[str, Any],
    metrics: dict[str, Any],
    tolerance: float,
    activate_if_better: bool = True,
) -> tuple[ModelVersion, Gate | None]:
    """Register a freshly trained checkpoint and activate it when the gate allows.

    Returns the version and the gate's decision (``None`` when activation was not asked for).
    """
    version = register_version(
        session, path=path, sha256=sha256, manifest=manifest, metrics=metrics
    )
    if not activate_if_better:
        return version, None
    current = active_version(session)
    gate = activation_gate(
        metrics,
        current.metrics if current else None,
        tolerance,
        active_sha256=current.sha256 if current else None,
    )
    if gate.activate:
        activate(session, version.id)
    return version, gate


def mark_failed(session: Session, version_id: int, reason: str) -> None:
    version = session.get(ModelVersion, version_id)
    if version is None:
        return
    version.status = ModelStatus.failed.value
    version.is_active = False
    version.note = reason
    session.flush()


def clear_failure(session: Session, version_id: int) -> None:
    """A failed version whose checkpoint verified again: registered (activatable) once more,
    its note saying what had failed."""
    version = session.get(ModelVersion, version_id)
    if version is None or version.status != ModelStatus.failed.value:
        return
    version.status = ModelStatus.registered.value
    version.note = f"verified again after: {version.note or 'a failure'}"[:2000]
    session.flush()


@dataclass(frozen=True)
class Gate:
    activate: bool
    reason: str


def activation_gate(
    new_metrics: dict[str, Any],
    active_metrics: dict[str, Any] | None,
    tolerance: float,
    *,
    active_sha256: str | None = None,
) -> Gate:
    """Decide whether a new model may replace the active one.

    ``*_metrics`` are the versions' ``metrics`` JSON. The fair comparison is the one training
    made at finishing (``metrics["gate"]``, ``ml.fit.finish.gate_figures``): the new model and the
    active checkpoint scored on the same held-out slice; it is used when it scored the model
    still active (``active_sha256``). Otherwise — the active model changed meanwhile, or could
    not be scored — each version's own ``"validation"`` figures are compared, measured on
    different slices, and the reason says so. A model is activated when no gated metric is
    worse than the active one's by more than ``tolerance`` (relative). With no active model,
    any model is activated. A model without validation metrics (a store too small to hold
    ratings out) does not replace one that has them; the reason says when a model is not
    validated. The reason shows both figures of every gated metric.
    """
    new_val = new_metrics.get("validation") or {}
    validated = any(new_val.get(key) is not None for key, _ in GATED_METRICS)
    if not active_metrics:
        return Gate(True, "no active model" if validated else "no active model; not validated")
    if not validated:  # nothing to compare: never silently replaces a validated model
        active_val = active_metrics.get("validation") or {}
        if any(active_val.get(key) is not None for key, _ in GATED_METRICS):
            return Gate(False, "not validated, unlike the active model")
        return Gate(True, "not validated, nor is the active model")
    figures = new_metrics.get("gate") or {}
    scored = figures.get("active") or {}
    if active_sha256 is not None and scored.get("sha256") == active_sha256 and "new" in figures:
        new_val, old_val = figures["new"], scored
        where = f"on the same held-out slice of {figures.get('held_out_ratings', '?')} ratings"
    else:
        old_val = active_metrics.get("validation") or {}
        why = f": {scored['error']}" if scored.get("error") else ""
        where = (
            "on each model's own validation slice (the active model was not scored on the new "
            f"one's{why})"
        )
    compared, worse = [], []
    for key, higher_is_better in GATED_METRICS:
        new, old = new_val.get(key), old_val.get(key)
        if new is None or old is None:
            continue
        compared.append(f"{key} {new:.4f} against the active model's {old:.4f}")
        slack = abs(old) * tolerance
        if new < old - slack if higher_is_better else new > old + slack:
            worse.append(key)
    figures_text = "; ".join(compared) if compared else "no figures to compare"
    if worse:
        return Gate(False, f"validation {', '.join(worse)} worse ({figures_text}, {where})")
    return Gate(True, f"validation metrics not worse ({figures_text}, {where})")
