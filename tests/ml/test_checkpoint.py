"""ml.checkpoint: atomic writes, identical round trips, and refusal of damaged checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.checkpoint import (
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    load,
    load_model,
    save,
)
from ml.model import Autoencoder, ModelConfig
from tests.ml.test_data import random_matrix

TINY = ModelConfig(hidden=(12, 6), activation="tanh")


def tiny_model(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder.from_data(random_matrix(30, 20), TINY).eval()


def tiny_manifest(model: Autoencoder) -> dict:
    return {"movie_ids": list(range(100, 100 + model.n_items)), "metrics": {"validation": {}}}


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, Autoencoder]:
    model = tiny_model()
    path, _ = save(tmp_path / "models", model, tiny_manifest(model))
    return path, model


def test_save_writes_one_complete_version_directory(tmp_path: Path) -> None:
    model = tiny_model()
    path, sha = save(tmp_path, model, tiny_manifest(model), extra_files={"curve.png": b"png"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .tmp-* left behind
    assert path.name.startswith("v") and path.name.endswith(sha[:8])
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, MANIFEST, "curve.png"])
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["weights_sha256"] == sha
    assert manifest["architecture"] == model.architecture()
    assert manifest["rating_scale"] == {"min": 0.5, "max": 5.0, "step": 0.5}
    assert {"created_at", "package_version", "movie_ids"} <= set(manifest)
    second, _ = save(tmp_path, model, tiny_manifest(model))
    assert second != path and second.is_dir()


def test_round_trip_gives_identical_scores(written: tuple[Path, Autoencoder]) -> None:
    path, model = written
    manifest, state = load(path)
    again = Autoencoder.from_architecture(manifest["architecture"])
    again.load_state_dict(state)
    again.eval()
    x = torch.from_numpy(random_matrix(5, 20, seed=9).toarray())
    with torch.no_grad():
        a_pred, a_scores = model(x, x != 0)
        b_pred, b_scores = again(x, x != 0)
    assert torch.equal(a_pred, b_pred) and torch.equal(a_scores, b_scores)


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_tampered_weights_are_refused(written: tuple[Path, Autoencoder]) -> None:
    path, _ = written
    raw = bytearray((path / WEIGHTS).read_bytes())
    raw[-3] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="altered or damaged"):
        load(path)


def test_other_format_version_is_refused(written: tuple[Path, Autoencoder]) -> None:
    path, _ = written
    _edit_manifest(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="format_version"):
        load(path)


def test_missing_weights_are_refused(written: tuple[Path, Autoencoder]) -> None:
    path, _ = written
    (path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"no weights\.safetensors"):
        load(path)


def test_garbage_manifest_is_refused(written: tuple[Path, Autoencoder]) -> None:
    path, _ = written
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(path)
    (path / MANIFEST).write_text(json.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="not a movierec manifest"):
        load(path)


def test_foreign_or_absent_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a movierec checkpoint"):
        load(tmp_path / "other")


def test_shape_mismatch_is_reported_on_load(written: tuple[Path, Autoencoder]) -> None:
    from ml.inference import Recommender

    path, model = written
    arch = model.architecture()
    arch["config"]["hidden"] = [7, 3]
    _edit_manifest(path, architecture=arch)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        Recommender.from_checkpoint(path)
    assert np.isfinite(float(model.global_mean))


# Keys of removed modes, as checkpoints written before their removal carry them (their defaults).
RETIRED_AS_WRITTEN = {
    "tied": False,
    "refeed": False,
    "wide_trainable": False,
    "wide_mode": "ensemble",
    "wide_gain": 10.0,
    "negative_weight": 0.1,
}


def _with_architecture(path: Path, changes: dict) -> None:
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["architecture"]["config"].update(changes)
    manifest_path.write_text(json.dumps(manifest))


def test_checkpoints_with_retired_modes_at_their_defaults_load_with_identical_answers(
    written: tuple[Path, Autoencoder],
) -> None:
    """A checkpoint written before the removal of tied decoders, re-feeding, trainable or
    summed wide paths and the weighted ranking loss (all off by default) loads as before."""
    path, model = written
    _with_architecture(path, RETIRED_AS_WRITTEN)
    manifest, state = load(path)
    assert manifest["architecture"]["config"]["wide_mode"] == "ensemble"
    again = Autoencoder.from_architecture(manifest["architecture"])
    again.load_state_dict(state)
    x = torch.from_numpy(random_matrix(5, 20, seed=9).toarray())
    with torch.no_grad():
        for a, b in zip(model.eval()(x, x > 0), again.eval()(x, x > 0), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "changes",
    [
        {"wide_mode": "sum"},
        {"tied": True},
        {"refeed": True},
        {"wide_trainable": True},
        {"ranking_loss": "weighted_mse"},
    ],
)
def test_checkpoints_that_used_a_retired_mode_are_refused_with_a_retrain_message(
    written: tuple[Path, Autoencoder], changes: dict
) -> None:

    path, _ = written
    _with_architecture(path, changes)
    with pytest.raises(CheckpointError, match="retrain the model"):
        load_model(path)
