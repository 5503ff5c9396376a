"""The serving path's scoring step alone: ``rank_batch`` per user, by batch size.

Loads checkpoints of a store's registry the way the API does (``load_checkpoint``: verified,
``precision="auto"``), draws random stored users and times ``app.serving.rank_batch`` (the
micro-batcher's pass: encode, forward, masked top-k, predicted ratings of the returned movies)
on one torch thread. With ``--passes N`` every batch size is timed N times over the same users
and the fastest pass is reported (a shared host's noise only ever adds time).

    python bench/bench_rank.py --database-url sqlite:///var/bench/serve/ml100k/store.db \\
        --versions 1,3 --batches 1,8,64 --passes 5
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from sqlalchemy import create_engine, text

from app.serving import load_checkpoint, rank_batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--versions", required=True, help="model version ids, comma-separated")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--users", type=int, default=160, help="users scored per batch size")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--passes", type=int, default=1, help="timed passes; the fastest is shown")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    engine = create_engine(args.database_url)
    with engine.connect() as conn:
        paths: dict[int, str] = {
            int(i): str(path)
            for i, path in conn.execute(text("SELECT id, path FROM model_versions"))
        }
        rows = conn.execute(text("SELECT user_id, movie_id, rating FROM ratings")).fetchall()
    engine.dispose()
    users: dict[int, dict[int, float]] = {}
    for user, movie, rating in rows:
        users.setdefault(int(user), {})[int(movie)] = float(rating)
    pool = list(users.values())
    for version in (int(v) for v in args.versions.split(",")):
        recommender = load_checkpoint(paths[version], "cpu")
        allowed = np.ones(len(recommender.movie_ids), dtype=bool)
        figures = []
        for size in (int(b) for b in args.batches.split(",")):
            rng = random.Random(0)
            count = max(3, args.users // size)
            batches = [
                [(rng.choice(pool), args.n, allowed) for _ in range(size)] for _ in range(count)
            ]
            rank_batch(recommender, batches[0])  # warm-up
            per_user = float("inf")
            for _ in range(max(1, args.passes)):
                start = time.perf_counter()
                for batch in batches:
                    rank_batch(recommender, batch)
                per_user = min(per_user, (time.perf_counter() - start) / (count * size))
            figures.append(f"batch {size}: {per_user * 1e3:.3f} ms/user")
        print(f"version {version} ({getattr(recommender, 'precision', 'float32')}):", *figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
