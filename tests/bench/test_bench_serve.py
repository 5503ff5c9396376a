"""The serving benchmark end to end on a small synthetic catalogue: it builds its store with the
project's commands, serves it, drives it with wrk and reports every figure the docs quote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serve_reports_computed_and_default_runs(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (.ci/run installs it)")
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_serve.py"),
            "--dir",
            str(tmp_path),
            "--catalogues",
            "synth87k",
            "--synth-movies",
            "600",
            "--synth-users",
            "80",
            "--synth-ratings",
            "4000",
            "--duration",
            "1",
            "--connections",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results: dict[str, Any] = json.loads((tmp_path / "serve-results.json").read_text())
    runs = results["synthetic (600 movies)"]
    assert set(runs) == {"installed+computed", "installed+default"}
    for label, run in runs.items():
        for phase in ("ping", "recommendations", "half_rate"):
            figures = run[phase]
            assert figures["requests"] > 0 and figures["rps"] > 0, (label, phase)
            assert figures["non_2xx"] == 0 and figures["socket_errors"] == 0, (label, phase)
            assert 0 < figures["p50_ms"] <= figures["p99_ms"], (label, phase)
            assert figures["server_cpu_us_per_request"] > 0, (label, phase)
        assert run["ratio"] == pytest.approx(
            run["recommendations"]["rps"] / run["ping"]["rps"], abs=1e-3
        )
        ping_cpu = run["ping"]["server_cpu_us_per_request"]
        recs_cpu = run["recommendations"]["server_cpu_us_per_request"]
        assert run["cpu_ratio"] == pytest.approx(ping_cpu / recs_cpu, abs=1e-3)
        assert run["model_version"] == 1
    assert runs["installed+computed"]["env"] == {"MOVIEREC_RESULT_MEMO_SIZE": "0"}
    assert runs["installed+computed"]["mean_batch"] >= 1  # every answer scored
    assert "memo_hit_rate" not in runs["installed+computed"]  # the memo is off: no lookups
    # after the warm-up (every user once) the default server's memo holds all 80 users
    default = runs["installed+default"]
    assert default["warmup_seconds"] > 0
    assert default["memo_hit_rate"] == 1.0
    # the Markdown table quotes the same runs
    assert "| synthetic (600 movies) | installed+computed |" in done.stdout
    assert "cpu ratio" in done.stdout
