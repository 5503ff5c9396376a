"""The service's CUDA path end to end: ``movierec train`` on CUDA (bf16 autocast) against the
same command on CPU, then ``movierec serve`` on CUDA answering recommendations over HTTP.

``python bench/gpu_service_check.py [--data DIR | --ratings R.csv --movies M.csv]
[--requests 300] [--out FILE.json]``

1. Builds a SQLite store in a scratch folder (``db upgrade``, then ``data import DIR``,
   MovieLens-100K by default from ``var/data/ml-100k``, or ``data import --ratings --movies``).
2. Runs ``movierec train --device cuda`` (activated) and ``movierec train --device cpu
   --no-activate`` on the same data and reports each command's wall time and the validation line
   it printed.
3. Starts ``movierec serve --no-worker`` with ``MOVIEREC_DEVICE=auto`` (CUDA when present), checks
   that ``/readyz`` reports the model on ``cuda``, then times ``--requests`` sequential user
   recommendations and visitor recommendations (p50/p95/p99 in ms); the same against a server
   with ``MOVIEREC_DEVICE=cpu`` for comparison.

Exits with status 2 and a clear message when no CUDA device is present. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import torch
from gpu_check import accelerator, add_smoke_flag  # run as a script: bench/ is on sys.path

CLI = [sys.executable, "-c", "from app.cli import main; main()"]


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and the output of one ``movierec`` command (raises on failure)."""
    start = time.perf_counter()
    done = subprocess.run(CLI + args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"movierec {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def validation_line(output: str) -> str | None:
    found = re.findall(r"^validation: .*$", output, flags=re.M)
    return found[-1] if found else None


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def store_ids(database_url: str) -> tuple[list[int], list[int]]:
    """Ids of the users who have ratings and of every movie, from a SQLite store."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        users = [u for (u,) in conn.execute("SELECT DISTINCT user_id FROM ratings ORDER BY 1")]
        movies = [m for (m,) in conn.execute("SELECT id FROM movies ORDER BY 1")]
    return users, movies


def serve_and_time(env: dict[str, str], device: str, port: int, requests: int) -> dict[str, Any]:
    """Start a server on ``device``, wait until ready, time user and visitor recommendations."""
    # The server's log goes to a file: a pipe nobody reads while timing could fill and stall it.
    with tempfile.TemporaryFile(mode="w+") as log:
        return _serve_and_time(env, device, port, requests, log)


def _serve_and_time(
    env: dict[str, str], device: str, port: int, requests: int, log: IO[str]
) -> dict[str, Any]:
    server_env = dict(env, MOVIEREC_DEVICE=device)
    proc = subprocess.Popen(
        [*CLI, "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            ready: dict[str, Any] = {}
            for _ in range(240):
                try:
                    r = client.get("/readyz")
                    if r.status_code == 200:
                        ready = r.json()
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"serve exited early:\n{log.read()}")
                time.sleep(0.5)
            else:
                raise SystemExit("the server did not become ready in 120 s")
            rng = random.Random(0)
            stored, movies = store_ids(env["MOVIEREC_DATABASE_URL"])
            users = [rng.choice(stored) for _ in range(requests)]
            for user in users[:20]:  # warm-up
                client.get(f"/v1/users/{user}/recommendations").raise_for_status()
            user_ms = []
            for user in users:
                t = time.perf_counter()
                r = client.get(f"/v1/users/{user}/recommendations", params={"n": 10})
                user_ms.append(1000 * (time.perf_counter() - t))
                r.raise_for_status()
            sample = r.json()
            visitor_ms = []
            for _ in range(requests):
                picks = rng.sample(movies, min(8, len(movies)))
                body = {
                    "ratings": [{"movie_id": m, "rating": rng.choice([1, 3, 5])} for m in picks]
                }
                t = time.perf_counter()
                r = client.post("/v1/recommendations", json=body)
                visitor_ms.append(1000 * (time.perf_counter() - t))
                r.raise_for_status()
        return {
            "readyz_model": ready.get("model"),
            "user_recommendations": percentiles(user_ms),
            "visitor_recommendations": percentiles(visitor_ms),
            "sample_answer": {
                "model_version": sample.get("model_version"),
                "first": (sample.get("items") or [None])[0],
            },
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="var/data/ml-100k", help="a MovieLens folder to import")
    p.add_argument("--ratings", help="a ratings CSV to import instead (with --movies)")
    p.add_argument("--movies", help="the movies CSV that goes with --ratings")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", help="also write the JSON report here")
    add_smoke_flag(p)
    args = p.parse_args(argv)
    if bool(args.ratings) != bool(args.movies):
        p.error("--ratings and --movies go together")
    accel = accelerator(args.smoke_on_cpu, "gpu_service_check")
    if accel is None:
        return 2
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if accel == "cuda" else "none (smoke run on CPU)",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            MOVIEREC_DATABASE_URL=f"sqlite:///{tmp}/store.db",
            MOVIEREC_MODEL_DIR=f"{tmp}/models",
            MOVIEREC_LOG_LEVEL="WARNING",
        )
        seconds, _ = run_cli(["db", "upgrade"], env)
        source = [args.data]
        if args.ratings:
            source = ["--ratings", args.ratings, "--movies", args.movies]
        seconds, _ = run_cli(["data", "import", *source], env)
        report["import_s"] = round(seconds, 2)
        for name, device, extra in (("accel", accel, []), ("cpu", "cpu", ["--no-activate"])):
            seconds, out = run_cli(["train", "--device", device, *extra], env)
            report[f"train_{name}"] = {"wall_s": round(seconds, 2), "result": validation_line(out)}
        report["train_speedup"] = round(
            report["train_cpu"]["wall_s"] / report["train_accel"]["wall_s"], 2
        )
        report["serve_accel"] = serve_and_time(env, "auto", args.port, args.requests)
        report["serve_cpu"] = serve_and_time(env, "cpu", args.port + 1, args.requests)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
