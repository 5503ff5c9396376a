"""Import benchmark: a synthetic 5-million-rating CSV set into fresh PostgreSQL and SQLite
stores, against a bare ``COPY`` of the same CSV into an unindexed, unconstrained PostgreSQL table
(the ceiling any importer into PostgreSQL can approach).

    python bench/bench_import.py [--dir var/bench] [--ratings 5000000]

The data set is generated once into ``--dir`` and reused while its parameters match. The
PostgreSQL ceiling and import run interleaved ``--repeat`` times (medians compared, so both see
the same machine load); SQLite runs once. Prints a Markdown table and writes
``bench_import.json`` beside the data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from app.db import migrate
from app.ingest.formats import custom_csv
from app.ingest.importer import import_dataset
from app.ingest.synth import SynthConfig, write_csv

PG_SERVER = os.environ.get("MOVIEREC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")


def ensure_dataset(folder: Path, cfg: SynthConfig) -> tuple[Path, Path]:
    """Generate the CSV set unless one with the same parameters is already there."""
    marker = folder / "dataset.json"
    ratings, movies = folder / "ratings.csv", folder / "movies.csv"
    wanted = asdict(cfg)
    if marker.exists() and json.loads(marker.read_text()) == wanted and ratings.exists():
        print(f"reusing {ratings}")
        return ratings, movies
    started = time.perf_counter()
    write_csv(cfg, folder)
    marker.write_text(json.dumps(wanted))
    print(f"generated {cfg.ratings:,} ratings in {time.perf_counter() - started:.1f} s")
    return ratings, movies


def _admin() -> psycopg.Connection[Any]:
    dsn = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    return psycopg.connect(dsn, autocommit=True)


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards."""
    name = f"movierec_bench_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def time_import(url: str, ratings: Path, movies: Path, reimport: bool) -> dict[str, Any]:
    """Import once into an empty store, then (``reimport``) again: nothing changes, the
    idempotent path."""
    dataset = custom_csv(ratings, movies)
    first = import_dataset(url, dataset, progress=False)
    result = {
        "seconds": first.seconds,
        "ratings_per_s": first.ratings_read / first.seconds,
        "ratings_added": first.written.ratings_added,
        "phases": first.written.phases,
    }
    if reimport:
        again = import_dataset(url, dataset, progress=False)
        result["reimport_seconds"] = again.seconds
        result["reimport_ratings_updated"] = again.written.ratings_updated
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time, with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [r["seconds"] for r in runs]}


def time_postgres(ratings: Path, movies: Path, repeat: int) -> tuple[dict[str, Any], ...]:
    """Ceiling and import interleaved ``repeat`` times, each pair in a fresh database, so that
    both see the same machine load; medians are compared."""
    ceilings, imports = [], []
    for index in range(repeat):
        with fresh_postgres() as url:
            ceilings.append(time_copy_ceiling(url, ratings))
            imports.append(time_import(url, ratings, movies, reimport=index == repeat - 1))
    reimport = {k: v for k, v in imports[-1].items() if k.startswith("reimport")}
    return {**median_run(imports), **reimport}, median_run(ceilings)


def time_copy_ceiling(url: str, ratings: Path) -> dict[str, Any]:
    """``COPY`` of the raw CSV into a table with no index, key or constraint."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE copy_ceiling (user_id integer, movie_id integer, "
            "rating double precision, ts bigint)"
        )
        conn.commit()
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY copy_ceiling FROM STDIN (FORMAT csv, HEADER true)") as copy,
            ratings.open("rb") as stream,
        ):
            while block := stream.read(1 << 20):
                copy.write(block)
        conn.commit()
        seconds = time.perf_counter() - started
        rows = conn.execute("SELECT count(*) FROM copy_ceiling").fetchone()
    count = int(rows[0]) if rows else 0
    return {"seconds": seconds, "ratings_per_s": count / seconds, "rows": count}


def time_sqlite(folder: Path, ratings: Path, movies: Path) -> dict[str, Any]:
    path = folder / "bench.sqlite"
    for leftover in folder.glob("bench.sqlite*"):
        leftover.unlink()
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    try:
        return time_import(url, ratings, movies, reimport=True)
    finally:
        for leftover in folder.glob("bench.sqlite*"):
            leftover.unlink()


def markdown(results: dict[str, dict[str, Any]], ceiling: float) -> str:
    lines = [
        "| target | seconds (median) | ratings/s | share of COPY ceiling | re-import (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        share = r["ratings_per_s"] / ceiling
        again = f"{r['reimport_seconds']:.1f}" if "reimport_seconds" in r else "-"
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['ratings_per_s']:,.0f} | {share:.2f} | {again} |"
        )
    return "\n".join(lines)


def phases_table(result: dict[str, Any]) -> str:
    """Where the median PostgreSQL import spent its time, as the writer measured it."""
    lines = ["| PostgreSQL import phase (median run) | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in result.get("phases", {}).items()]
    lines.append(f"| whole import | {result['seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("var/bench"))
    parser.add_argument("--ratings", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--movies", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="PostgreSQL runs (median).")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    cfg = SynthConfig(users=args.users, movies=args.movies, ratings=args.ratings, seed=args.seed)
    ratings, movies = ensure_dataset(args.dir, cfg)

    results: dict[str, dict[str, Any]] = {}
    results["PostgreSQL import"], ceiling = time_postgres(ratings, movies, args.repeat)
    if not args.skip_sqlite:
        results["SQLite import"] = time_sqlite(args.dir, ratings, movies)
    results["PostgreSQL bare COPY (ceiling)"] = ceiling

    table = markdown(results, ceiling["ratings_per_s"])
    print(table)
    print(phases_table(results["PostgreSQL import"]))
    report = {
        "ratings": args.ratings,
        "users": args.users,
        "movies": args.movies,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        "postgres_share_of_ceiling": results["PostgreSQL import"]["ratings_per_s"]
        / ceiling["ratings_per_s"],
    }
    out = args.dir / "bench_import.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
