"""Similar films judged on MovieLens-100K series: do a film's sequels and prequels come first?

For every film of a series below (sequels, trilogies, a film and its sequel), the share of its
siblings among its 10 most similar films, ``hits / min(10, siblings)``; the figure is the mean
over the films of every series. Every method sees all of MovieLens-100K:

- ``item-knn cosine``: cosine of the movies' columns of the binary rating matrix;
- ``ease columns``: EASE's item × item weights (λ = 500), the column of the film;
- ``served``: ``Recommender.similar`` — what ``GET /v1/movies/{id}/similar`` answers — of a
  checkpoint trained by ``ml.fit.pipeline.train_from_store`` with the default preset (5 % slice held
  out for early stopping and finishing, as ``movierec train`` does). ``--skip-served`` leaves it
  out (it trains the model: about a minute on 2 cores);
- ``served, large-catalogue configuration`` (``--served-large N``): the same with the
  configuration of catalogues above ``wide_max_items`` forced (``wide_max_items`` N, below the
  catalogue's size: no EASE, so similar films are the stored nearest movies by cosine).

``python bench/similar_films.py --ratings-csv R.csv [--movies-csv M.csv]`` or
``python bench/similar_films.py --recbole-dir DIR`` (the ``ml-100k`` folder that
``movierec data fetch movielens-100k`` writes from its fallback); ``--series JSON`` judges
other series (``{"name": [movie ids]}``). Prints JSON lines: one per method with its share,
and the ten neighbours of The Godfather under each (when the catalogue has it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ml.baselines import EASE
from ml.data import RatingsData, build_matrix
from ml.evaluate import ratings_from_csv

K = 10
GODFATHER = 127

# MovieLens-100K movie ids of each series (titles as in u.item); a film's siblings are the
# other films of its series. Remakes of a film (Cape Fear 1962/1991, Father of the Bride
# 1950 and the 1995 sequel of its remake) are not siblings and are left out.
SERIES: dict[str, tuple[int, ...]] = {
    "Star Wars": (50, 172, 181),
    "The Godfather": (127, 187),
    "Indiana Jones": (174, 210),
    "Alien": (183, 176, 665, 343),
    "The Terminator": (195, 96),
    "Die Hard": (144, 226, 550),
    "Batman": (403, 231, 29, 254),
    "Star Trek": (449, 228, 229, 230, 450, 227, 380, 222),
    "Jaws": (234, 452, 453),
    "Three Colors": (60, 61, 59),
    "Jurassic Park": (82, 252),
    "Free Willy": (78, 35, 457),
    "Amityville": (441, 440, 438, 442, 437, 439, 858),
    "Evil Dead": (201, 184),
    "Jean de Florette": (165, 166),
    "Wallace & Gromit": (189, 169, 408),
    "Scream": (288, 895),
    "Ace Ventura": (67, 364),
    "Home Alone": (94, 894),
    "Homeward Bound": (140, 1033),
    "Young Guns": (232, 1188),
    "Under Siege": (233, 1228),
    "Speed": (568, 1089),
    "Grease": (451, 1037),
    "The Blues Brothers": (186, 362),
    "The Crow": (68, 743),
    "Candyman": (672, 816),
    "The Brady Bunch": (401, 412),
    "Highlander": (431, 1419),
    "The Prophecy": (774, 351),
    "Aladdin": (95, 422),
}

Neighbours = Callable[[int], np.ndarray]  # column → columns of its K most similar, best first


def sibling_share(
    neighbours: Neighbours, movie_ids: np.ndarray, series: dict[str, tuple[int, ...]]
) -> float:
    """Mean over the films of every series of |siblings ∩ top K| / min(K, |siblings|).

    Films or series the catalogue lacks are skipped (a series needs two known films)."""
    col_of = {int(m): c for c, m in enumerate(movie_ids)}
    shares = []
    for films in series.values():
        known = [col_of[m] for m in films if m in col_of]
        if len(known) < 2:
            continue
        for col in known:
            siblings = set(known) - {col}
            top = [int(c) for c in neighbours(col)[:K]]
            assert col not in top, "a film is not its own neighbour"
            shares.append(len(siblings & set(top)) / min(K, len(siblings)))
    return float(np.mean(shares))


def top_of(scores: np.ndarray, col: int) -> np.ndarray:
    """The K best columns of one film's similarity scores, the film itself excluded."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[col] = -np.inf
    return np.argsort(-scores, kind="stable")[:K]


def knn_cosine(matrix: sp.csr_matrix) -> Neighbours:
    x = (matrix > 0).astype(np.float64).tocsc()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(0))).ravel() + 1e-12
    gram = (x.T @ x).toarray() / norms[:, None] / norms[None, :]  # (I, I)
    return lambda col: top_of(gram[:, col], col)


def ease_columns(matrix: sp.csr_matrix, lam: float) -> Neighbours:
    weights = EASE(lam=lam).fit(matrix).weights  # (I, I), zero diagonal
    return lambda col: top_of(weights[:, col], col)


def served(data: RatingsData, model: dict | None = None) -> tuple[Neighbours, dict]:
    """``Recommender.similar`` of a checkpoint written as ``movierec train`` writes it
    (``model``: ModelConfig overrides)."""
    from ml.fit.config import preset, with_overrides
    from ml.fit.pipeline import train_from_store
    from ml.inference import Recommender

    overrides = {"device": "cpu", "progress": False, "model": model or {}}
    config = with_overrides(preset("default"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train_from_store("", Path(tmp), config, data=data)
        assert result is not None
        seconds = time.perf_counter() - start
        rec = Recommender.from_checkpoint(result.path, device="cpu")
    col_of = {int(m): c for c, m in enumerate(data.movie_ids)}

    def neighbours(col: int) -> np.ndarray:
        items = rec.similar(int(data.movie_ids[col]), n=K)
        return np.asarray([col_of[s.movie_id] for s in items])

    return neighbours, {"train_seconds": round(seconds, 1), "version": result.path.name}


def recbole_data(folder: Path) -> tuple[RatingsData, dict[int, str]]:
    """MovieLens-100K from RecBole's atomic files (``ml-100k.inter``, ``ml-100k.item``)."""
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", usecols=[0, 1])
    items.columns = ["movie_id", "title"]
    catalogue = np.unique(
        np.concatenate([inter["item_id"].to_numpy(np.int64), items["movie_id"].to_numpy()])
    )
    matrix, user_ids = build_matrix(
        inter["user_id"].to_numpy(np.int64),
        inter["item_id"].to_numpy(np.int64),
        inter["rating"].to_numpy(np.float64),
        catalogue,
    )
    titles = dict(zip(items["movie_id"].astype(int), items["title"].astype(str), strict=True))
    return RatingsData(matrix, user_ids, catalogue, None), titles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ratings-csv", type=Path)
    source.add_argument("--recbole-dir", type=Path)
    parser.add_argument("--movies-csv", type=Path)
    parser.add_argument("--lam", type=float, default=500.0, help="EASE's λ")
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--served-large", type=int, metavar="N", help="wide_max_items forced")
    parser.add_argument(
        "--series", type=json.loads, help='JSON {"name": [movie ids]} in place of SERIES'
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    titles: dict[int, str] = {}
    if args.recbole_dir is not None:
        data, titles = recbole_data(args.recbole_dir)
    else:
        data = ratings_from_csv(args.ratings_csv, args.movies_csv)
        if args.movies_csv is not None:
            movies = pd.read_csv(args.movies_csv)
            if "title" in movies.columns:
                titles = dict(zip(movies["movie_id"], movies["title"].astype(str), strict=True))
    methods: dict[str, tuple[Neighbours, dict]] = {
        "item-knn cosine": (knn_cosine(data.matrix), {}),
        f"ease columns (λ {args.lam:g})": (ease_columns(data.matrix, args.lam), {}),
    }
    if not args.skip_served:
        methods["served (Recommender.similar)"] = served(data)
    if args.served_large is not None:
        large = served(data, {"wide_max_items": args.served_large})
        methods["served, large-catalogue configuration"] = large
    series = {k: tuple(v) for k, v in args.series.items()} if args.series else SERIES
    godfather = np.flatnonzero(data.movie_ids == GODFATHER)
    for name, (neighbours, facts) in methods.items():
        line = {
            "method": name,
            "sibling_share@10": round(sibling_share(neighbours, data.movie_ids, series), 4),
        }
        if len(godfather):
            near = [int(data.movie_ids[c]) for c in neighbours(int(godfather[0]))]
            line["godfather_top10"] = [titles.get(m, str(m)) for m in near]
        print(json.dumps(line | facts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
