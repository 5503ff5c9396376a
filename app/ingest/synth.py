"""Synthetic catalogues and ratings that look like MovieLens, at any scale.

Structure, chosen to exercise what real data exercises:

- movie popularity is Zipf-like (a few blockbusters, a long tail),
- user activity is log-normal with a floor (MovieLens keeps users with at least 20 ratings),
- each user rates distinct movies drawn by popularity without replacement,
- ratings come from latent tastes: ``clip(round_half(mu + b_user + b_movie + p_user . q_movie +
  noise))``, with popular movies rated a little higher, as in MovieLens,
- movies get a title, a release year (recent years more common) and one to three genres.

Ratings are produced per chunk of users with numpy, so a MovieLens-32M-sized set never sits in
memory; each chunk has its own random stream derived from the seed, so the output is the same
for a seed whatever consumes it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from tqdm import tqdm

from app.ingest.formats import GENRES_100K
from app.ingest.importer import load_ratings
from app.ingest.loader import WriteResult, open_writer

GENRES = GENRES_100K[1:]  # every MovieLens genre but "unknown"
# How common each genre is among movies (roughly MovieLens' shares).
GENRE_WEIGHTS = np.array([8, 5, 2, 3, 12, 4, 2, 20, 2, 1, 4, 2, 3, 8, 4, 8, 2, 1], dtype=np.float64)
_ADJECTIVES = [
    "Silent",
    "Crimson",
    "Last",
    "Hidden",
    "Broken",
    "Golden",
    "Midnight",
    "Lost",
    "Wild",
    "Frozen",
    "Electric",
    "Quiet",
    "Burning",
    "Dark",
    "Bright",
    "Endless",
    "Savage",
    "Little",
    "Secret",
    "Final",
    "Lonely",
    "Restless",
    "Distant",
    "Iron",
    "Velvet",
]
_NOUNS = [
    "River",
    "Garden",
    "Empire",
    "Station",
    "Summer",
    "Kingdom",
    "Heart",
    "Road",
    "Mirror",
    "Shadow",
    "Ocean",
    "Letter",
    "Island",
    "Machine",
    "Stranger",
    "Harvest",
    "Horizon",
    "Promise",
    "Winter",
    "Circus",
    "Detective",
    "Orchestra",
    "Frontier",
    "Dream",
]
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic data set; every knob on one screen."""

    users: int
    movies: int
    ratings: int
    seed: int = 0
    factors: int = 8  # latent taste dimensions
    popularity_exponent: float = 1.0  # Zipf exponent of movie popularity by rank
    popularity_offset: float = 5.0  # flattens the very head: weight = (rank + offset) ** -exponent
    activity_sigma: float = 1.0  # spread of log(ratings per user)
    min_per_user: int = 20  # floor of ratings per user (lowered when the totals demand it)
    global_mean: float = 3.55
    user_bias_sd: float = 0.35
    movie_bias_sd: float = 0.45
    popularity_quality: float = 0.5  # correlation of movie bias with log popularity
    taste_sd: float = 0.55  # spread of the p . q interaction
    noise_sd: float = 0.7
    first_time: int = 946_684_800  # 2000-01-01, earliest rating
    last_time: int = 1_700_000_000  # 2023-11-14, latest rating
    mean_active_days: float = 365.0  # mean span of a user's rating activity
    chunk_users: int = 5_000  # users generated per chunk (memory ~ chunk_users x mean ratings)

    def validate(self) -> None:
        """Refuse impossible sizes with a clear message."""
        if self.users < 1 or self.movies < 1 or self.ratings < 1:
            raise ValueError("--users, --movies and --ratings must be positive")
        if self.ratings > self.users * self.movies:
            raise ValueError(
                f"{self.ratings:,} ratings do not fit {self.users:,} users x "
                f"{self.movies:,} movies without repeating a (user, movie) pair"
            )
        if self.users > 2**31 - 1 or self.movies > 2**31 - 1:
            raise ValueError("ids must fit 32 bits")


@dataclass(frozen=True)
class Catalogue:
    """The movies and their hidden parameters (index i is movie id i + 1)."""

    movies: pd.DataFrame  # movie_id, title, year, genres
    popularity_cdf: np.ndarray  # (M,) cumulative sampling probabilities
    log_weights: np.ndarray  # (M,)
    bias: np.ndarray  # (M,)
    factors: np.ndarray  # (M, k)


@dataclass(frozen=True)
class Users:
    """Per-user hidden parameters (index i is user id i + 1)."""

    counts: np.ndarray  # (N,) ratings per user, summing to the requested total
    bias: np.ndarray  # (N,)
    factors: np.ndarray  # (N, k)
    first_time: np.ndarray  # (N,) start of activity, Unix seconds
    active_seconds: np.ndarray  # (N,) length of activity


def _factor_scale(cfg: SynthConfig) -> float:
    """Entry scale so that p . q over k factors has standard deviation ``taste_sd``."""
    return float(np.sqrt(cfg.taste_sd / np.sqrt(cfg.factors)))


def make_catalogue(cfg: SynthConfig) -> Catalogue:
    """Movies with Zipf-like popularity, popularity-correlated quality, years and genres."""
    rng = np.random.default_rng([cfg.seed, 0])
    m = cfg.movies
    rank = rng.permutation(m)  # popularity rank of each movie id, independent of the id
    weights = (rank + cfg.popularity_offset) ** -cfg.popularity_exponent
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    log_w = np.log(weights)
    z_pop = (log_w - log_w.mean()) / (log_w.std() or 1.0)
    rho = cfg.popularity_quality
    bias = cfg.movie_bias_sd * (rho * z_pop + np.sqrt(1 - rho**2) * rng.standard_normal(m))
    bias -= float(np.dot(weights / weights.sum(), bias))  # the mean rating stays at global_mean
    factors = rng.normal(0.0, _factor_scale(cfg), size=(m, cfg.factors))
    years = np.clip(2023 - np.floor(rng.exponential(14.0, m)), 1920, 2023).astype(np.int64)
    movies = pd.DataFrame(
        {
            "movie_id": np.arange(1, m + 1, dtype=np.int64),
            "title": _titles(rng, m),
            "year": pd.array(years, dtype="Int64"),
            "genres": _genres(rng, m),
        }
    )
    return Catalogue(movies, cdf, log_w, bias, factors)


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    """Titles like ``Golden Harbour``, ``Garden, The`` (MovieLens' moved article) or sequels."""
    adjective = rng.integers(0, len(_ADJECTIVES), n)
    noun = rng.integers(0, len(_NOUNS), n)
    style = rng.random(n)
    sequel = rng.integers(2, 5, n)
    titles = []
    for a, b, s, q in zip(adjective, noun, style, sequel, strict=True):
        base = f"{_ADJECTIVES[a]} {_NOUNS[b]}"
        if s < 0.12:
            base = f"{base}, The"
        elif s < 0.18:
            base = f"{base} {q}"
        titles.append(base)
    return titles


def _genres(rng: np.random.Generator, n: int) -> list[str]:
    """One to three genres per movie, drawn by weight without replacement (Gumbel top-k)."""
    keys = np.log(GENRE_WEIGHTS) + rng.gumbel(size=(n, len(GENRES)))  # (M, G)
    order = np.argsort(-keys, axis=1)[:, :3]
    how_many = rng.choice([1, 2, 3], size=n, p=[0.45, 0.35, 0.20])
    return ["|".join(GENRES[g] for g in row[:k]) for row, k in zip(order, how_many, strict=True)]


def allocate_counts(total: int, weights: np.ndarray, floor: int, cap: int) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights``, each within
    ``[floor, cap]`` (the floor lowered when the total cannot give everyone that much)."""
    n = len(weights)
    if total > n * cap:
        raise ValueError(f"{total} cannot be split into {n} parts of at most {cap}")
    floor = min(floor, cap, total // n)
    counts = np.full(n, floor, dtype=np.int64)
    remaining = total - floor * n
    while remaining > 0:
        room = cap - counts
        open_weights = np.where(room > 0, weights, 0.0)
        share = np.floor(open_weights / open_weights.sum() * remaining).astype(np.int64)
        share = np.minimum(share, room)
        if share.sum() == 0:  # hand the last units to the heaviest users with room
            heaviest = np.argsort(-open_weights, kind="stable")[:remaining]
            share[heaviest[room[heaviest] > 0]] = 1
        counts += share
        remaining -= int(share.sum())
    return counts


def make_users(cfg: SynthConfig) -> Users:
    """Long-tailed activity, biases, taste vectors and activity windows for every user."""
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.users
    activity = rng.lognormal(0.0, cfg.activity_sigma, n)
    counts = allocate_counts(cfg.ratings, activity, cfg.min_per_user, cfg.movies)
    span = cfg.last_time - cfg.first_time
    active = np.minimum(rng.exponential(cfg.mean_active_days * SECONDS_PER_DAY, n), span) + 1
    first = cfg.first_time + (rng.random(n) * np.maximum(span - active, 0)).astype(np.int64)
    return Users(
        counts=counts,
        bias=rng.normal(0.0, cfg.user_bias_sd, n),
        factors=rng.normal(0.0, _factor_scale(cfg), size=(n, cfg.factors)),
        first_time=first,
        active_seconds=active.astype(np.int64),
    )


def sample_pairs(
    rng: np.random.Generator, counts: np.ndarray, catalogue: Catalogue, max_rounds: int = 6
) -> np.ndarray:
    """Distinct movies for each user of a chunk, drawn by popularity without replacement.

    Returns sorted keys ``user_index * M + movie_index``. Draws with replacement are cheap and
    vectorised; a few rounds top up users still short of their count, and the rare user left
    short after that (one who rates much of a small catalogue) gets an exact Gumbel top-k.
    """
    m = len(catalogue.popularity_cdf)
    need = counts.astype(np.int64).copy()
    chosen = np.empty(0, dtype=np.int64)
    users = np.arange(len(counts), dtype=np.int64)
    for round_ in range(max_rounds):
        lacking = need > 0
        if not lacking.any():
            break
        draws = need[lacking] * (2 << round_) + 8
        who = np.repeat(users[lacking], draws)
        movie = np.minimum(np.searchsorted(catalogue.popularity_cdf, rng.random(len(who))), m - 1)
        keys = who * m + movie
        keys = keys[~np.isin(keys, chosen, assume_unique=False)]
        unique, first = np.unique(keys, return_index=True)
        unique = unique[np.argsort(first)]  # distinct keys in draw order
        owner = unique // m
        order = np.argsort(owner, kind="stable")
        owner, unique = owner[order], unique[order]
        rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
        take = rank < need[owner]
        chosen = np.union1d(chosen, unique[take])
        need -= np.bincount(owner[take], minlength=len(counts))
    for user in np.flatnonzero(need > 0):
        extra = _exact_top_k(rng, int(user), int(need[user]), chosen, catalogue)
        chosen = np.union1d(chosen, extra)
    return chosen


def _exact_top_k(
    rng: np.random.Generator, user: int, k: int, chosen: np.ndarray, catalogue: Catalogue
) -> np.ndarray:
    m = len(catalogue.log_weights)
    keys = catalogue.log_weights + rng.gumbel(size=m)
    own = chosen[(chosen >= user * m) & (chosen < (user + 1) * m)] - user * m
    keys[own] = -np.inf
    picked = np.argpartition(-keys, k - 1)[:k]
    return user * m + picked


def rate(
    rng: np.random.Generator,
    user_index: np.ndarray,
    movie_index: np.ndarray,
    users: Users,
    catalogue: Catalogue,
    cfg: SynthConfig,
) -> np.ndarray:
    """Ratings from latent tastes, rounded to half stars and clipped to 0.5-5."""
    taste = np.einsum("ij,ij->i", users.factors[user_index], catalogue.factors[movie_index])  # (R,)
    score = (
        cfg.global_mean
        + users.bias[user_index]
        + catalogue.bias[movie_index]
        + taste
        + rng.normal(0.0, cfg.noise_sd, len(user_index))
    )
    return np.clip(np.round(score * 2) / 2, 0.5, 5.0)


def iter_rating_chunks(
    cfg: SynthConfig, catalogue: Catalogue, users: Users
) -> Iterator[pd.DataFrame]:
    """Ratings chunk by chunk of users: user_id, movie_id, rating, timestamp, line."""
    m = cfg.movies
    written = 0
    for index, start in enumerate(range(0, cfg.users, cfg.chunk_users)):
        stop = min(start + cfg.chunk_users, cfg.users)
        rng = np.random.default_rng([cfg.seed, 2, index])
        keys = sample_pairs(rng, users.counts[start:stop], catalogue)
        user_index = keys // m + start
        movie_index = keys % m
        rating = rate(rng, user_index, movie_index, users, catalogue, cfg)
        offset = (rng.random(len(keys)) * users.active_seconds[user_index]).astype(np.int64)
        timestamp = np.minimum(users.first_time[user_index] + offset, cfg.last_time)
        yield pd.DataFrame(
            {
                "user_id": user_index + 1,
                "movie_id": movie_index + 1,
                "rating": rating,
                "timestamp": timestamp,
                "line": np.arange(written, written + len(keys), dtype=np.int64) + 2,
            }
        )
        written += len(keys)


def generate(cfg: SynthConfig) -> tuple[pd.DataFrame, Iterator[pd.DataFrame]]:
    """The movies and a stream of rating chunks for ``cfg``."""
    cfg.validate()
    catalogue = make_catalogue(cfg)
    users = make_users(cfg)
    return catalogue.movies, iter_rating_chunks(cfg, catalogue, users)


def _progress(chunks: Iterator[pd.DataFrame], total: int, enabled: bool) -> Iterator[pd.DataFrame]:
    with tqdm(
        total=total, unit=" ratings", unit_scale=True, desc="synth", disable=not enabled
    ) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


def synthesise_into_store(
    database_url: str, cfg: SynthConfig, progress: bool = True
) -> WriteResult:
    """Generate and stream straight into an empty store through the import writer."""
    movies, _ = generate(cfg)
    with open_writer(database_url) as writer:
        present = len(writer.movie_ids())
        if present:
            raise ValueError(
                f"the store already holds {present:,} movies; synthetic ids start at 1 and would "
                "overwrite them: use an empty database, or --out to write CSV files"
            )
        writer.write_movies(movies)
        _, result = load_ratings(writer, lambda: _progress(generate(cfg)[1], cfg.ratings, progress))
        return result


def write_csv(cfg: SynthConfig, out: Path, progress: bool = True) -> tuple[Path, Path]:
    """Write ``movies.csv`` (movie_id,title,genres) and ``ratings.csv``
    (user_id,movie_id,rating,timestamp), the ``--movies``/``--ratings`` import format."""
    out.mkdir(parents=True, exist_ok=True)
    movies, chunks = generate(cfg)
    movies_path, ratings_path = out / "movies.csv", out / "ratings.csv"
    with movies_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["movie_id", "title", "genres"])
        for movie_id, title, year, genres in movies.itertuples(index=False):
            writer.writerow([movie_id, f"{title} ({year})", genres])
    options = pa_csv.WriteOptions(include_header=False)
    with ratings_path.open("wb") as stream:
        stream.write(b"user_id,movie_id,rating,timestamp\n")
        for chunk in _progress(chunks, cfg.ratings, progress):
            table = pa.Table.from_pandas(
                chunk[["user_id", "movie_id", "rating", "timestamp"]], preserve_index=False
            )
            pa_csv.write_csv(table, stream, options)  # C++ writer: ~10x pandas' to_csv
    return movies_path, ratings_path
