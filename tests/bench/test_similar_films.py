"""bench/similar_films.py: the sibling share, and the whole script on a catalogue with planted
series, where every method that reads co-ratings must find each film's siblings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from similar_films import sibling_share  # noqa: E402

SERIES = {"a": (11, 12, 13), "b": (21, 22)}


def planted_csv(path: Path, seed: int = 0) -> Path:
    """Ratings of 80 users over 40 movies: a user who sees one film of a series sees all."""
    rng = np.random.default_rng(seed)
    others = [m for m in range(100, 135)]
    rows = []
    for user in range(1, 81):
        seen = set(rng.choice(others, size=8, replace=False).tolist())
        for films in SERIES.values():
            if rng.random() < 0.35:
                seen |= set(films)
        rows += [f"{user},{m},{rng.integers(1, 6)}" for m in sorted(seen)]
    path.write_text("user_id,movie_id,rating\n" + "\n".join(rows) + "\n")
    return path


def test_sibling_share_counts_siblings_among_the_top_k() -> None:
    movie_ids = np.array([11, 12, 13, 21, 22, 30])
    # film 11 finds one of its two siblings, 12 both, 13 none; 21 and 22 find each other.
    tops = {0: [1, 5], 1: [0, 2], 2: [5, 3], 3: [4], 4: [3, 0]}
    share = sibling_share(lambda c: np.array(tops[c]), movie_ids, SERIES)
    assert share == (0.5 + 1.0 + 0.0 + 1.0 + 1.0) / 5
    unknown = {"a": (11, 99), "b": (21, 22)}  # a series with one known film is skipped
    assert sibling_share(lambda c: np.array(tops[c]), movie_ids, unknown) == 1.0


def test_every_method_finds_planted_series(tmp_path: Path) -> None:
    csv = planted_csv(tmp_path / "ratings.csv")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "similar_films.py"),
            "--ratings-csv",
            str(csv),
            "--series",
            json.dumps(SERIES),
            "--served-large",
            "10",  # below the 40 movies: the configuration of large catalogues
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if '"method"' in line]
    shares = {line["method"]: line["sibling_share@10"] for line in lines}
    assert len(shares) == 4, shares  # kNN, EASE, served, served without EASE
    assert all(share == 1.0 for share in shares.values()), shares
