"""Tiny MovieLens releases written byte for byte in each release's own format, and helpers to
read the store back, shared by the ingestion tests."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from app.db.models import Movie, Rating, User
from app.db.session import make_engine

# (id, title as MovieLens writes it, genres)
MOVIES = [
    (1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (2, "Misérables, Les (1995)", ["Drama", "Musical"]),
    (3, "Matrix, The (1999)", ["Action", "Sci-Fi", "Thriller"]),
    (4, "Babylon 5", []),
]
# (user, movie, rating, Unix time); whole stars so that every release can hold them
RATINGS = [
    (1, 1, 4.0, 881250949),
    (1, 2, 3.0, 881250950),
    (2, 1, 5.0, 891717742),
    (2, 3, 2.0, 878887116),
    (3, 4, 1.0, 886397596),
]
# What every release above must become in the store.
EXPECTED_MOVIES = {
    1: ("Toy Story", 1995, "Animation|Children's|Comedy"),
    2: ("Misérables, Les", 1995, "Drama|Musical"),
    3: ("Matrix, The", 1999, "Action|Sci-Fi|Thriller"),
    4: ("Babylon 5", None, ""),
}
EXPECTED_RATINGS = {(u, m): (r, t) for u, m, r, t in RATINGS}
GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def _year(title: str) -> str:
    return title[-5:-1] if title.endswith(")") else ""


def write_100k(root: Path) -> Path:
    """``u.data`` (tabs) and ``u.item`` (pipes, latin-1, 19 genre flags), as in ml-100k."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_bytes(
        "".join(f"{u}\t{m}\t{int(r)}\t{t}\n" for u, m, r, t in RATINGS).encode("ascii")
    )
    lines = []
    for movie_id, title, genres in MOVIES:
        year = _year(title)
        date = f"01-Jan-{year}" if year else ""
        flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
        url = "http://us.imdb.com/M/title-exact?" + title.replace(" ", "%20")
        lines.append(f"{movie_id}|{title}|{date}||{url}|{flags}\n")
    (root / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (root / "u.user").write_bytes(b"1|24|M|technician|85711\n")
    return root


def _write_dat(root: Path, encoding: str, with_users: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.dat").write_bytes(
        "".join(f"{u}::{m}::{int(r)}::{t}\n" for u, m, r, t in RATINGS).encode("ascii")
    )
    movies = "".join(f"{i}::{title}::{'|'.join(g)}\n" for i, title, g in MOVIES)
    (root / "movies.dat").write_bytes(movies.encode(encoding))
    if with_users:
        (root / "users.dat").write_bytes(b"1::F::1::10::48067\n")
    return root


def write_1m(root: Path) -> Path:
    """``ratings.dat`` / ``movies.dat`` with ``::`` separators, latin-1, plus ``users.dat``."""
    return _write_dat(root, "latin-1", with_users=True)


def write_10m(root: Path) -> Path:
    """The 10M layout: ``::`` separators, UTF-8, no ``users.dat``."""
    return _write_dat(root, "utf-8", with_users=False)


def write_csv_release(root: Path) -> Path:
    """20M/25M/32M/latest: ``ratings.csv`` and ``movies.csv`` with quoted titles."""
    root.mkdir(parents=True, exist_ok=True)
    ratings = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},{r:.1f},{t}\n" for u, m, r, t in RATINGS
    )
    (root / "ratings.csv").write_bytes(ratings.encode("utf-8"))
    movies = ["movieId,title,genres\n"]
    for movie_id, title, genres in MOVIES:
        shown = f'"{title}"' if "," in title else title
        movies.append(f"{movie_id},{shown},{'|'.join(genres) or '(no genres listed)'}\n")
    (root / "movies.csv").write_bytes("".join(movies).encode("utf-8"))
    return root


def write_recbole(root: Path) -> Path:
    """RecBole atomic files: typed headers, tabs, titles without year, genres space-separated."""
    root.mkdir(parents=True, exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{m}\t{int(r)}\t{t}\n" for u, m, r, t in RATINGS
    )
    (root / "ml-100k.inter").write_bytes(inter.encode("utf-8"))
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"]
    for movie_id, title, genres in MOVIES:
        year = _year(title)
        name = title[: -len(" (1995)")] if year else title
        items.append(f"{movie_id}\t{name}\t{year}\t{' '.join(genres)}\n")
    (root / "ml-100k.item").write_bytes("".join(items).encode("utf-8"))
    return root


RELEASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    # name: (folder name in the official archive, writer)
    "movielens-100k": ("ml-100k", write_100k),
    "movielens-1m": ("ml-1m", write_1m),
    "movielens-10m": ("ml-10M100K", write_10m),
    "movielens-csv": ("ml-latest-small", write_csv_release),
    "recbole": ("ml-100k", write_recbole),
}


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip ``folder`` with its own name as the top directory, like the GroupLens archives."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return archive


def write_csv(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> Path:
    """A ``--ratings``/``--movies`` CSV from a header and raw lines."""
    path.write_bytes((header + "\n" + "".join(r + "\n" for r in rows)).encode(encoding))
    return path


def epoch(moment: datetime) -> int:
    """Unix seconds of a stored time (SQLite gives it back without a zone: it is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


Snapshot = tuple[
    dict[int, tuple[str, int | None, str]],  # movie id -> (title, year, genres)
    dict[int, int],  # user id -> created_at (Unix seconds)
    dict[tuple[int, int], tuple[float, int]],  # (user, movie) -> (rating, rated_at)
]


def snapshot(url: str) -> Snapshot:
    """Every movie, user and rating in the store, as plain values."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            movies = {
                row.id: (row.title, row.year, row.genres) for row in conn.execute(select(Movie))
            }
            users = {row.id: epoch(row.created_at) for row in conn.execute(select(User))}
            ratings = {
                (row.user_id, row.movie_id): (row.rating, epoch(row.rated_at))
                for row in conn.execute(select(Rating))
            }
    finally:
        engine.dispose()
    return movies, users, ratings
