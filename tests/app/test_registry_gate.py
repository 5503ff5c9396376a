"""The activation gate's decision from the figures training recorded."""

from __future__ import annotations

from app.services.registry import activation_gate

STORED = {"validation": {"ndcg@10": 0.3074, "rmse": 0.8769}}  # the active model's own slice


def new_metrics(new: dict, active: dict, sha: str = "abc") -> dict:
    return {
        "validation": {"ndcg@10": 0.2850, "rmse": 0.8800},  # the new model's own slice
        "gate": {"held_out_ratings": 4983, "new": new, "active": {"sha256": sha, **active}},
    }


def test_the_same_slice_figures_decide_and_the_reason_shows_both() -> None:
    metrics = new_metrics({"ndcg@10": 0.3074, "rmse": 0.8700}, {"ndcg@10": 0.3074, "rmse": 0.87})
    gate = activation_gate(metrics, STORED, 0.0, active_sha256="abc")
    assert gate.activate, gate.reason
    assert "ndcg@10 0.3074 against the active model's 0.3074" in gate.reason
    assert "rmse 0.8700 against the active model's 0.8700" in gate.reason
    assert "same held-out slice of 4983 ratings" in gate.reason
    worse = new_metrics({"ndcg@10": 0.30, "rmse": 0.87}, {"ndcg@10": 0.31, "rmse": 0.87})
    gate = activation_gate(worse, STORED, 0.0, active_sha256="abc")
    assert not gate.activate and "ndcg@10 worse" in gate.reason


def test_figures_of_another_active_model_are_not_used() -> None:
    metrics = new_metrics({"ndcg@10": 0.31, "rmse": 0.87}, {"ndcg@10": 0.31, "rmse": 0.87})
    gate = activation_gate(metrics, STORED, 0.0, active_sha256="another")
    assert not gate.activate
    assert "ndcg@10 0.2850 against the active model's 0.3074" in gate.reason
    assert "own validation slice" in gate.reason


def test_an_active_model_that_could_not_be_scored_is_named_in_the_reason() -> None:
    metrics = {
        "validation": {"ndcg@10": 0.31, "rmse": 0.87},
        "gate": {"active": {"path": "v1", "error": "v1 has no weights.safetensors"}},
    }
    gate = activation_gate(metrics, STORED, 0.0, active_sha256="abc")
    assert gate.activate and "v1 has no weights.safetensors" in gate.reason
    assert activation_gate(metrics, None, 0.0).reason == "no active model"
