"""The hot route's ratings query through ``RatingsReader``: on the event loop or via its thread.

Reads every stored user's ratings (``rows_for_user_async``) on a uvloop event loop, three
passes, alternately with the query on the loop's thread (``inline``, the SQLite default) and on
the reader's own thread (a hop there and back per query); prints wall microseconds per query.

    python bench/bench_ratings_read.py --database-url sqlite:///var/bench/serve/ml100k/store.db
"""

from __future__ import annotations

import argparse
import time

import uvloop
from sqlalchemy import create_engine, text

from app.repositories.ratings import RatingsReader


async def measure(reader: RatingsReader, users: list[int], rounds: int) -> None:
    for inline in (True, False) * rounds:
        reader.inline = inline
        for user in users[:50]:  # warm-up
            await reader.rows_for_user_async(user)
        start = time.perf_counter()
        for _ in range(3):
            for user in users:
                await reader.rows_for_user_async(user)
        per_query = (time.perf_counter() - start) / (3 * len(users))
        where = "on the loop" if inline else "reader thread"
        print(f"{where}: {per_query * 1e6:.1f} µs per query")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    engine = create_engine(args.database_url)
    with engine.connect() as conn:
        users = [int(u) for (u,) in conn.execute(text("SELECT id FROM users ORDER BY id"))]
    reader = RatingsReader(engine)
    try:
        uvloop.run(measure(reader, users, args.rounds))
    finally:
        reader.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
