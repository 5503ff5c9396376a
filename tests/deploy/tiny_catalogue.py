"""A tiny, realistic catalogue for tests that run the real commands end to end.

Forty MovieLens-100K films (ids, titles and genres as in the release) and a few dozen users
whose ratings follow genre tastes, written as the ``--ratings/--movies`` CSV files that
``movierec data import`` reads. Small enough to import and train in seconds, structured enough
that a trained model has something to learn (similar films, personalised lists).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (movie id, "Title (year)", genres) from MovieLens-100K.
MOVIES: tuple[tuple[int, str, str], ...] = (
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "GoldenEye (1995)", "Action|Adventure|Thriller"),
    (7, "Twelve Monkeys (1995)", "Drama|Sci-Fi"),
    (11, "Seven (Se7en) (1995)", "Crime|Thriller"),
    (12, "Usual Suspects, The (1995)", "Crime|Thriller"),
    (22, "Braveheart (1995)", "Action|Drama|War"),
    (28, "Apollo 13 (1995)", "Action|Drama|Thriller"),
    (50, "Star Wars (1977)", "Action|Adventure|Romance|Sci-Fi|War"),
    (56, "Pulp Fiction (1994)", "Crime|Drama"),
    (64, "Shawshank Redemption, The (1994)", "Drama"),
    (69, "Forrest Gump (1994)", "Comedy|Romance|War"),
    (71, "Lion King, The (1994)", "Animation|Children's|Musical"),
    (82, "Jurassic Park (1993)", "Action|Adventure|Sci-Fi"),
    (89, "Blade Runner (1982)", "Film-Noir|Sci-Fi"),
    (94, "Home Alone (1990)", "Children's|Comedy"),
    (96, "Terminator 2: Judgment Day (1991)", "Action|Sci-Fi|Thriller"),
    (98, "Silence of the Lambs, The (1991)", "Drama|Thriller"),
    (100, "Fargo (1996)", "Crime|Drama|Thriller"),
    (117, "Rock, The (1996)", "Action|Adventure|Thriller"),
    (121, "Independence Day (ID4) (1996)", "Action|Sci-Fi|War"),
    (127, "Godfather, The (1972)", "Action|Crime|Drama"),
    (132, "Wizard of Oz, The (1939)", "Adventure|Children's|Drama|Musical"),
    (135, "2001: A Space Odyssey (1968)", "Drama|Mystery|Sci-Fi|Thriller"),
    (168, "Monty Python and the Holy Grail (1974)", "Comedy"),
    (172, "Empire Strikes Back, The (1980)", "Action|Adventure|Drama|Romance|Sci-Fi|War"),
    (173, "Princess Bride, The (1987)", "Action|Adventure|Comedy|Romance"),
    (174, "Raiders of the Lost Ark (1981)", "Action|Adventure"),
    (181, "Return of the Jedi (1983)", "Action|Adventure|Romance|Sci-Fi|War"),
    (195, "Terminator, The (1984)", "Action|Sci-Fi|Thriller"),
    (204, "Back to the Future (1985)", "Comedy|Sci-Fi"),
    (210, "Indiana Jones and the Last Crusade (1989)", "Action|Adventure"),
    (222, "Star Trek: First Contact (1996)", "Action|Adventure|Sci-Fi"),
    (228, "Star Trek: The Wrath of Khan (1982)", "Action|Adventure|Sci-Fi"),
    (234, "Jaws (1975)", "Action|Horror"),
    (257, "Men in Black (1997)", "Action|Adventure|Comedy|Sci-Fi"),
    (258, "Contact (1997)", "Drama|Sci-Fi"),
    (269, "Full Monty, The (1997)", "Comedy"),
    (286, "English Patient, The (1996)", "Drama|Romance|War"),
    (288, "Scream (1996)", "Horror|Thriller"),
    (294, "Liar Liar (1997)", "Comedy"),
)
# Tastes: each user loves one of these genre groups and is lukewarm about the rest.
TASTES: tuple[frozenset[str], ...] = (
    frozenset({"Sci-Fi", "Adventure"}),
    frozenset({"Crime", "Thriller"}),
    frozenset({"Comedy", "Children's", "Animation", "Musical"}),
    frozenset({"Drama", "Romance", "War"}),
)


@dataclass(frozen=True)
class CatalogueFiles:
    ratings: Path
    movies: Path
    n_users: int
    n_ratings: int


def genres_of(movie_id: int) -> set[str]:
    return next(set(g.split("|")) for m, _, g in MOVIES if m == movie_id)


def write_catalogue(
    folder: Path, *, n_users: int = 48, per_user: int = 14, seed: int = 7
) -> CatalogueFiles:
    """Write ``ratings.csv`` and ``movies.csv`` into ``folder``; user ids are 1..n_users."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    movies_path, ratings_path = folder / "movies.csv", folder / "ratings.csv"
    with movies_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["movie_id", "title", "genres"])
        writer.writerows(MOVIES)
    ids = np.array([m for m, _, _ in MOVIES])
    n_ratings = 0
    with ratings_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "movie_id", "rating", "timestamp"])
        for user in range(1, n_users + 1):
            taste = TASTES[user % len(TASTES)]
            for movie in rng.choice(ids, size=per_user, replace=False):
                liked = bool(genres_of(int(movie)) & taste)
                base = 4.5 if liked else 2.0
                rating = float(np.clip(np.round(base + rng.normal(0, 0.6)), 1, 5))
                writer.writerow([user, int(movie), rating, 880_000_000 + n_ratings])
                n_ratings += 1
    return CatalogueFiles(ratings_path, movies_path, n_users, n_ratings)
