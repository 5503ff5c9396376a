"""Finishing a trained model on a held-out slice its weights never saw: calibration of the
rating paths, the ranking weights, EASE solved again on every rating; and the figures the
activation gate compares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ml import checkpoint
from ml.data import remap_columns
from ml.fit.config import TrainConfig
from ml.fit.loop import validate
from ml.model import Autoencoder


def choose_ranking_weights(
    model: Autoencoder, train: sp.csr_matrix, val: sp.csr_matrix
) -> dict[str, Any]:
    """On a held-out slice: the weight of the deep ranking correction beside EASE
    (``choose_wide_mix``), then that of the re-ranking by predicted ratings (``choose_rerank``).
    Returns the choices and the NDCG@10 of every candidate; {} for a model without EASE."""
    if model.wide is None:
        return {}
    tried = model.choose_wide_mix(train, val)
    reranks = model.choose_rerank(train, val)
    return {
        "wide_mix": model.config.wide_mix,
        "wide_mix_validation_ndcg@10": {str(k): v for k, v in tried.items()},
        "rerank_weight": model.config.rerank_weight,
        "rerank_validation_ndcg@10": {str(k): v for k, v in reranks.items()},
    }


def finish(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    full: sp.csr_matrix,
    config: TrainConfig,
) -> dict[str, Any]:
    """The finishing steps of a trained model, the same as the evaluation's (docs/evaluation.md).

    On the validation slice, which the weights never saw: refit the scales of the rating paths
    (``calibrate_rating_paths``) and choose the weight of the deep ranking correction beside EASE
    (``choose_wide_mix``) and the weight of the re-ranking by predicted ratings
    (``choose_rerank``); then validate the finished model (the metrics the registry compares).
    Last, tune and solve the closed-form EASE path again on every rating (``full``): it needs no
    early stopping, so the deployed model should not lose the slice. Returns the facts to record
    (with ``"validation"`` replaced by the finished model's figures); nothing without a slice.
    """
    if val.nnz == 0:
        return {}
    facts: dict[str, Any] = {"calibration": model.calibrate_rating_paths(train, val)}
    facts |= choose_ranking_weights(model, train, val)
    facts["validation"] = validate(model, train, val, torch.device("cpu"), config)
    if model.wide is not None:
        model.tune_closed_form_paths(full, seed=config.seed, rating_path=False)
        model.fit_closed_form_paths(full, rating_path=False)
        facts["wide_lambda"] = model.config.wide_lambda
    model.fit_similar(full)  # a model without EASE: its similar films from every rating too
    return facts


def gate_figures(
    model: Autoencoder,
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    movie_ids: np.ndarray,
    active: Path,
    config: TrainConfig,
) -> dict[str, Any]:
    """What the activation gate compares: the finished model and the active checkpoint at
    ``active``, each as it would be served, scored by :func:`validate` on the same held-out
    ratings — the new model's validation slice ``val``, less the ratings of movies the active
    model does not know (it could neither rank nor rate them) — from the same training rows.

    Both figures are optimistic alike: the active model saw most of this slice when it was
    trained, the new one's EASE path was solved on it at the end of :func:`finish`. They are
    meant for comparison, not as an estimate of quality. An active checkpoint that cannot be
    loaded is recorded with its error (the gate then says so).
    """
    try:
        old, manifest = checkpoint.load_model(active)
    except checkpoint.CheckpointError as exc:
        return {"active": {"path": str(active), "error": str(exc)}}
    old_ids = np.asarray(manifest["movie_ids"], dtype=np.int64)
    known = np.isin(movie_ids, old_ids).astype(np.float32)  # (I,)
    shared = sp.csr_matrix(val @ sp.diags(known), dtype=np.float32)
    shared.eliminate_zeros()
    cpu = torch.device("cpu")
    new_figures = validate(model, train, shared, cpu, config)
    old_figures = validate(
        old,
        remap_columns(train, movie_ids, old_ids),
        remap_columns(shared, movie_ids, old_ids),
        cpu,
        config,
    )
    return {
        "held_out_ratings": int(shared.nnz),
        "new": new_figures,
        "active": {"path": str(active), "sha256": manifest["weights_sha256"], **old_figures},
    }
