"""`movierec data ...`: fetch, import, synthesise and inspect data (thin layer over app.ingest).

The ingestion modules (pandas, numpy, pyarrow) are imported inside the commands, so that the
other `movierec` commands do not pay for them at start-up.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer

from app.config import get_settings
from app.ingest.errors import FetchError, IngestError

app = typer.Typer(no_args_is_help=True)

EXIT_BAD_INPUT = 2


class KnownDataset(StrEnum):
    movielens_100k = "movielens-100k"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


@app.command("fetch")
def fetch(
    dataset: KnownDataset = typer.Argument(..., help="Data set to download."),
    dest: Path | None = typer.Option(
        None, help="Target folder (default: <MOVIEREC_DATA_DIR>/ml-100k)."
    ),
) -> None:
    """Download MovieLens-100K (checksum verified); offline fallback: the recbole wheel on PyPI."""
    from app.ingest.fetch import fetch_movielens_100k

    target = dest or get_settings().data_dir / "ml-100k"
    try:
        result = fetch_movielens_100k(target)
    except FetchError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(result.message)


@app.command("import")
def import_(
    path: Path | None = typer.Argument(
        None, help="A MovieLens release (directory or zip): 100k, 1m, 10m, 20m, 25m, 32m, latest."
    ),
    ratings: Path | None = typer.Option(
        None, help="CSV with header user_id,movie_id,rating[,timestamp]."
    ),
    movies: Path | None = typer.Option(None, help="CSV with header movie_id,title[,genres]."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Skip invalid lines (and report them) instead of stopping."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Import ratings and movies; idempotent, newer ratings replace older ones."""
    from app.ingest.importer import import_dataset, resolve_dataset

    settings = get_settings()
    try:
        dataset = resolve_dataset(path, ratings, movies)
        summary = import_dataset(
            settings.database_url, dataset, skip_invalid=skip_invalid, progress=progress
        )
    except IngestError as exc:
        typer.echo(f"error: {exc}", err=True)
        typer.echo("nothing was imported; the store is unchanged", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    for line in summary.lines():
        typer.echo(line)


@app.command("synth")
def synth(
    users: int = typer.Option(..., min=1, help="Number of users."),
    movies: int = typer.Option(..., min=1, help="Number of movies."),
    ratings: int = typer.Option(..., min=1, help="Number of ratings."),
    seed: int = typer.Option(0, help="Random seed (same seed, same data)."),
    out: Path | None = typer.Option(
        None, help="Write ratings.csv and movies.csv here instead of importing into the store."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate a realistic synthetic catalogue and ratings (popularity skew, latent tastes)."""
    from app.ingest.synth import SynthConfig, synthesise_into_store, write_csv

    cfg = SynthConfig(users=users, movies=movies, ratings=ratings, seed=seed)
    try:
        cfg.validate()
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    started = time.perf_counter()
    if out is not None:
        movies_path, ratings_path = write_csv(cfg, out, progress=progress)
        seconds = time.perf_counter() - started
        typer.echo(f"wrote {ratings_path} and {movies_path} in {seconds:.1f} s")
        return
    try:
        result = synthesise_into_store(get_settings().database_url, cfg, progress=progress)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    seconds = time.perf_counter() - started
    typer.echo(
        f"synthesised {ratings:,} ratings in {seconds:.1f} s: {result.movies_added:,} movies, "
        f"{result.users_added:,} users, {result.ratings_added:,} ratings added "
        f"({result.ratings_updated:,} updated)"
    )


@app.command("stats")
def stats() -> None:
    """Counts, density, rating histogram, activity per user and movie, newest rating."""
    from app.ingest.stats import store_stats

    for line in store_stats(get_settings().database_url).lines():
        typer.echo(line)
