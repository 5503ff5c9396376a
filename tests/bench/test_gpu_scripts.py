"""The GPU check scripts, run in their ``--smoke-on-cpu`` mode: every step on CPU, so that they
keep working on machines without a GPU, where they are not otherwise run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.ports import free_port
from tests.deploy.tiny_catalogue import write_catalogue

ROOT = Path(__file__).resolve().parents[2]


def smoke(script: str, *args: str) -> str:
    """Run ``bench/<script> --smoke-on-cpu ARGS`` from the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke-on-cpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_gpu_check_smoke() -> None:
    out = smoke("gpu_check.py", "--repeat", "2")
    report: dict[str, Any] = json.loads(out[out.index("{") :])
    assert report["device"] == "cpu (smoke run)"
    assert len(report["training"]["cuda_epoch_s"]) == 3 and report["training"]["cpu_epoch_s"]
    assert [r["batch"] for r in report["serving_cpu"]] == [1, 8, 64]
    assert all(r["ms_per_request"] > 0 for r in report["serving_cpu"])


def test_gpu_service_check_smoke(tmp_path: Path) -> None:
    files = write_catalogue(tmp_path / "data")
    out = tmp_path / "service.json"
    smoke(
        "gpu_service_check.py",
        "--ratings",
        str(files.ratings),
        "--movies",
        str(files.movies),
        "--requests",
        "5",
        "--port",
        str(free_port()),
        "--out",
        str(out),
    )
    report = json.loads(out.read_text())
    for name in ("train_accel", "train_cpu"):
        assert report[name]["result"].startswith("validation: rmse="), report[name]
    for name in ("serve_accel", "serve_cpu"):
        served = report[name]
        assert served["readyz_model"]["loaded"] and served["readyz_model"]["device"] == "cpu"
        assert served["user_recommendations"]["n"] == served["visitor_recommendations"]["n"] == 5
        assert served["sample_answer"]["first"]["movie_id"] > 0
