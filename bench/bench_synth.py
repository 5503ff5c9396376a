"""Synthesis benchmark: ratings per second and peak memory of ``data synth --out``.

    python bench/bench_synth.py [--users 200000 --movies 87000 --ratings 32000000] [--out DIR]

The default is a MovieLens-32M-sized set written as CSV. Peak memory is the process' maximum
resident set size (``resource.getrusage``), which shows that the set is streamed rather than
held. Prints a Markdown table and writes ``bench_synth.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from app.ingest.synth import SynthConfig, write_csv


def peak_rss_mib() -> float:
    """Maximum resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--movies", type=int, default=87_000)
    parser.add_argument("--ratings", type=int, default=32_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/bench/synth"))
    parser.add_argument("--keep", action="store_true", help="Keep the CSV files afterwards.")
    args = parser.parse_args()

    cfg = SynthConfig(users=args.users, movies=args.movies, ratings=args.ratings, seed=args.seed)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    movies, ratings = write_csv(cfg, args.out)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    size = ratings.stat().st_size
    result = {
        "users": args.users,
        "movies": args.movies,
        "ratings": args.ratings,
        "seconds": seconds,
        "ratings_per_s": args.ratings / seconds,
        "peak_rss_mib": peak,
        "rss_before_mib": baseline,
        "ratings_csv_mib": size / 2**20,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print("| ratings | users | movies | seconds | ratings/s | peak RSS (MiB) | CSV (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.ratings:,} | {args.users:,} | {args.movies:,} | {seconds:.1f} | "
        f"{result['ratings_per_s']:,.0f} | {peak:,.0f} | {size / 2**20:,.0f} |"
    )
    out = args.out / "bench_synth.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if not args.keep:
        movies.unlink()
        ratings.unlink()


if __name__ == "__main__":
    main()
