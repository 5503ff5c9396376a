"""Checkpoints: one directory per model version, written atomically and verified on load.

Layout of ``<out>/v<UTC time>-<sha8>/``:

- ``weights.safetensors`` — the state dict, tensors only (no pickle).
- ``manifest.json`` — ``format_version``, ``architecture`` (rebuilds the module), ``movie_ids`` in
  column order, rating scale and normalisation, training config, data snapshot, validation
  metrics, item popularity, package version, ``weights_sha256``, ``created_at``.

The directory is written as ``<out>/.tmp-XXXX`` and renamed into place, so a reader never sees a
half-written version. :func:`load` checks the format version and the weights' sha256 and raises
:class:`CheckpointError` with a message that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ml.model import Autoencoder

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
RATING_SCALE = {"min": 0.5, "max": 5.0, "step": 0.5}


class CheckpointError(Exception):
    """A checkpoint directory is missing, foreign, corrupt or of an unsupported format."""


def package_version() -> str:
    """The installed movierec version ("unknown" when running from a bare source tree)."""
    try:
        return metadata.version("movierec")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _tensors_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent contiguous CPU tensors (safetensors refuses shared storage)."""
    return {
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in model.state_dict().items()
    }


def _version_name(created: datetime, sha256: str, out_dir: Path) -> str:
    """``v<UTC timestamp>-<sha8>``, with a counter when that name is already taken."""
    base = f"v{created.strftime('%Y%m%dT%H%M%S%fZ')}-{sha256[:8]}"
    name, n = base, 1
    while (out_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def save(
    out_dir: Path | str,
    model: Any,
    manifest: dict[str, Any],
    *,
    extra_files: Mapping[str, bytes] | None = None,
) -> tuple[Path, str]:
    """Write ``model`` and ``manifest`` as a new version directory under ``out_dir``.

    ``model`` is an ``ml.model.Autoencoder`` (anything with ``state_dict()`` and
    ``architecture()``). The manifest given is completed with ``format_version``,
    ``architecture``, ``weights_sha256``, ``created_at`` and ``package_version``.
    ``extra_files`` (name → bytes, e.g. the learning curve) are written beside them, inside the
    same atomic rename.
    Returns ``(path of the version directory, sha256 of the weights)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir))
    try:
        save_file(_tensors_for_saving(model), str(tmp / WEIGHTS))
        sha256 = file_sha256(tmp / WEIGHTS)
        created = datetime.now(UTC)
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "architecture": model.architecture(),
            "weights_sha256": sha256,
            "created_at": created.isoformat(),
            "package_version": package_version(),
        }
        full.setdefault("rating_scale", RATING_SCALE)
        with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
            json.dump(full, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        for name, content in (extra_files or {}).items():
            if Path(name).name != name or name in (WEIGHTS, MANIFEST):
                raise ValueError(f"extra file name {name!r} is not a plain, free file name")
            (tmp / name).write_bytes(content)
        final = out_dir / _version_name(created, sha256, out_dir)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, sha256


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The checked manifest of the version directory ``path`` (weights not read)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: not a movierec checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise CheckpointError(f"{manifest_path} is not a movierec manifest (no format_version)")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path} has format_version {manifest['format_version']!r}; "
            f"this version of movierec reads format {FORMAT_VERSION}"
        )
    for key in ("architecture", "movie_ids", "weights_sha256"):
        if key not in manifest:
            raise CheckpointError(f"{manifest_path} lacks the field {key!r}")
    return manifest


def load(path: Path | str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a version directory: returns ``(manifest, state_dict)`` on CPU."""
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS}")
    actual = file_sha256(weights)
    if actual != manifest["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match its manifest (sha256 {actual[:12]}..., expected "
            f"{str(manifest['weights_sha256'])[:12]}...): the weights were altered or damaged"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} cannot be read: {exc}") from exc
    return manifest, state


def load_model(path: Path | str) -> tuple[Autoencoder, dict[str, Any]]:
    """The verified checkpoint at ``path`` as ``(Autoencoder in eval mode, manifest)``; raises
    ``CheckpointError`` when it cannot be read or its weights do not fit its architecture."""
    path = Path(path)
    manifest, state = load(path)
    try:
        model = Autoencoder.from_architecture(manifest["architecture"])
        model.load_state_dict(state)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the architecture: {exc}") from exc
    return model.eval(), manifest
