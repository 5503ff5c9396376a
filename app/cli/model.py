"""`movierec train|evaluate|recommend|predict`: the model commands of the command line.

Each command reads the settings (``MOVIEREC_*``), talks to the store through the session scope
and the registry service, and uses ``ml`` for training and inference. Failures the user can fix
(no active model, unknown user, a bad CSV line) end with a clear message and exit status 1.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from app.config import Settings, get_settings
from app.db.models import Movie, Rating, User
from app.db.session import session_scope
from app.services import registry

ID_CHUNK = 500  # ids per IN (...) query (SQLite limits bound parameters)


def fail(message: str) -> NoReturn:
    """Print ``message`` to stderr and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# ---------------------------------------------------------------------------- train
def _train_config(
    preset_name: str, config_file: Path | None, epochs: int | None, device: str | None
) -> Any:
    """TrainConfig from a preset, a JSON/TOML overrides file, then the flags."""
    from ml.fit.config import preset, read_config_file, with_overrides

    config = preset(preset_name)
    if config_file is not None:
        config = with_overrides(config, read_config_file(config_file))
    flags = {"epochs": epochs, "device": device}
    return with_overrides(config, {k: v for k, v in flags.items() if v is not None})


def _format_metrics(metrics: dict[str, Any]) -> str:
    val = metrics.get("validation", {})
    parts = [f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float) and k != "n_ratings"]
    epoch = metrics.get("best_epoch")
    return " ".join(parts) + (f" (epoch {epoch} of {metrics.get('epochs_run')})" if epoch else "")


def _validation_line(metrics: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The validation figures, or why there are none (never an empty ``validation:``)."""
    figures = _format_metrics(metrics)
    if metrics.get("validation"):
        return f"validation: {figures}"
    if not manifest.get("training", {}).get("val_frac", 1):
        return "validation: none (val_frac = 0: nothing was held out)"
    data = manifest.get("data", {})
    return (
        f"validation: none: the store is too small to validate on ({data.get('users', '?')} "
        f"users, {data.get('ratings', '?')} ratings: no user has enough ratings to hold some "
        "out); the model is trained on all of them, unvalidated"
    )


def train(
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the epochs."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    config_file: Path | None = typer.Option(
        None, "--config", help="JSON or TOML file of TrainConfig overrides."
    ),
    preset_name: str = typer.Option("default", "--preset", help="default, fast or seed."),
    no_activate: bool = typer.Option(False, "--no-activate", help="Register only."),
    if_no_model: bool = typer.Option(
        False, "--if-no-model", help="Do nothing when a model is already active."
    ),
) -> None:
    """Train on the store, write and register a checkpoint, print validation metrics."""
    from ml import progress
    from ml.data import DataError
    from ml.fit.pipeline import train_from_store

    settings = get_settings()
    settings.ensure_dirs()
    if device is not None and device not in ("auto", "cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {device!r}")
    with session_scope(settings.database_url) as session:
        active = registry.active_version(session)
        active_path = Path(active.path) if active is not None else None
    if if_no_model and active_path is not None:
        typer.echo(f"model {active_path.name} is active: nothing to train")
        return
    try:
        config = _train_config(preset_name, config_file, epochs, device or settings.device)
        result = train_from_store(
            settings.database_url,
            settings.model_dir,
            config,
            on_progress=progress.printer(),
            active=None if no_activate else active_path,
        )
    except (ValueError, DataError, RuntimeError) as exc:
        fail(str(exc))
    assert result is not None  # one process: this is rank 0
    with (
        progress.reporting(progress.printer()),
        progress.phase("registering"),
        session_scope(settings.database_url) as session,
    ):
        version, gate = registry.register_and_gate(
            session,
            path=str(result.path),
            sha256=result.sha256,
            manifest=result.manifest,
            metrics=result.metrics,
            tolerance=settings.activation_tolerance,
            activate_if_better=not no_activate,
        )
        status = "registered"
        if gate is not None:
            status = f"{'activated' if gate.activate else 'registered'} ({gate.reason})"
    typer.echo(f"checkpoint {result.path}")
    typer.echo(_validation_line(result.metrics, result.manifest))
    typer.echo(f"model version {version.id} {status}")


# ---------------------------------------------------------------------------- evaluate
def evaluate(
    version: int | None = typer.Option(
        None,
        "--version",
        help="Registry id whose training configuration the default autoencoder uses "
        "(default: the active model's, else the default preset).",
    ),
    out: Path = typer.Option(Path("var/reports"), "--out", help="Folder of the report."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Number of random splits (0, 1, ...)."),
    models: list[str] | None = typer.Option(
        None, "--model", help="Evaluate only these (repeatable): bias, popularity, ease, ..."
    ),
    quick: bool = typer.Option(False, "--quick", help="At most 3 epochs per autoencoder."),
) -> None:
    """RMSE/MAE and top-N metrics of the autoencoders against baselines, as a report."""
    from ml import evaluate as ml_evaluate
    from ml.data import DataError, load_ratings
    from ml.fit.config import preset, with_overrides

    settings = get_settings()
    training: dict[str, Any] | None = None
    with session_scope(settings.database_url) as session:
        chosen = (
            registry.get_version(session, version)
            if version is not None
            else registry.active_version(session)
        )
        if version is not None and chosen is None:
            fail(f"model version {version} does not exist")
        if chosen is not None:
            training = chosen.manifest.get("training")
    kwargs: dict[str, Any] = {"models": models} if models else {}
    try:
        if training is not None:
            kwargs["configs"] = {"default": with_overrides(preset("default"), training)}
        data = load_ratings(settings.database_url)
        report = ml_evaluate.run_evaluation(data, tuple(range(seeds)), out, quick, **kwargs)
    except (ValueError, DataError) as exc:
        fail(str(exc))
    typer.echo(ml_evaluate.markdown_table(report))
    typer.echo(f"report written to {out}")


# ---------------------------------------------------------------------------- recommend
def load_active(settings: Settings) -> Any:
    """The active model's Recommender, or a clear failure."""
    from ml.checkpoint import CheckpointError
    from ml.inference import Recommender

    with session_scope(settings.database_url) as session:
        active = registry.active_version(session)
        if active is None:
            fail("no active model: run `movierec train` first")
        path = active.path
    try:
        return Recommender.from_checkpoint(path, device=settings.device)
    except (CheckpointError, RuntimeError) as exc:
        fail(f"the active model cannot be loaded: {exc}")


def user_ratings(session: Session, user_id: int) -> dict[int, float] | None:
    """``{movie_id: rating}`` of one user (one indexed query); None when the user is unknown."""
    rows = session.execute(
        select(Rating.movie_id, Rating.rating).where(Rating.user_id == user_id)
    ).all()
    if rows:
        return {int(m): float(r) for m, r in rows}
    return {} if session.get(User, user_id) is not None else None


def _chunks(ids: list[int], size: int = ID_CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def ratings_of_users(session: Session, user_ids: Iterable[int]) -> dict[int, dict[int, float]]:
    """Ratings of many users, ``ID_CHUNK`` users per query; users without ratings are absent."""
    out: dict[int, dict[int, float]] = defaultdict(dict)
    for chunk in _chunks(sorted(set(user_ids))):
        stmt = select(Rating.user_id, Rating.movie_id, Rating.rating).where(
            Rating.user_id.in_(chunk)
        )
        for u, m, r in session.execute(stmt):
            out[int(u)][int(m)] = float(r)
    return dict(out)


def titles(session: Session, movie_ids: Iterable[int]) -> dict[int, str]:
    """Title of each movie id (one query per ``ID_CHUNK`` ids)."""
    out: dict[int, str] = {}
    for chunk in _chunks(list(movie_ids)):
        out.update(session.execute(select(Movie.id, Movie.title).where(Movie.id.in_(chunk))).all())
    return out


def _recommend_one(settings: Settings, user_id: int, n: int) -> None:
    rec = load_active(settings)
    with session_scope(settings.database_url) as session:
        ratings = user_ratings(session, user_id)
        if ratings is None:
            fail(f"unknown user {user_id}")
        items = rec.recommend(ratings, n) if ratings else rec.popular(n)
        names = titles(session, [s.movie_id for s in items])
    source = "model" if ratings else "popular"
    typer.echo(f"user {user_id}: {len(ratings)} ratings, model {rec.version_name}, {source}")
    typer.echo(f"{'rank':>4}  {'movie':>7}  {'score':>9}  {'pred':>5}  title")
    for rank, item in enumerate(items, start=1):
        typer.echo(
            f"{rank:>4}  {item.movie_id:>7}  {item.score:>9.4f}  {item.predicted_rating:>5.2f}  "
            f"{names.get(item.movie_id, '?')}"
        )


def _recommend_all(settings: Settings, n: int, out: Path) -> None:
    from ml.data import load_ratings, remap_columns
    from ml.inference import BATCH

    rec = load_active(settings)
    data = load_ratings(settings.database_url)
    matrix = remap_columns(data.matrix, data.movie_ids, rec.movie_ids)
    written = 0
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "rank", "movie_id", "score"])
        batches = rec.top_n_matrix(matrix, n)
        total = -(-matrix.shape[0] // BATCH)
        for start, ids, scores in tqdm(batches, total=total, desc="recommend", unit="batch"):
            for b in range(ids.shape[0]):
                user = int(data.user_ids[start + b])
                for rank in range(ids.shape[1]):
                    if ids[b, rank] < 0:
                        break
                    writer.writerow([user, rank + 1, int(ids[b, rank]), f"{scores[b, rank]:.6g}"])
                    written += 1
    typer.echo(f"wrote {written} rows for {matrix.shape[0]} users to {out}")


def recommend(
    user_id: int | None = typer.Argument(None, help="The user to recommend for."),
    n: int = typer.Option(10, "-n", "--n", min=1, help="Number of movies."),
    all_users: bool = typer.Option(False, "--all-users", help="Every user who has rated."),
    out: Path | None = typer.Option(None, "--out", help="CSV output for --all-users."),
) -> None:
    """Top-N unseen movies of one user, or of every user into a CSV file."""
    settings = get_settings()
    if all_users:
        if user_id is not None:
            fail("give either USER_ID or --all-users, not both")
        if out is None:
            fail("--all-users needs --out FILE.csv")
        _recommend_all(settings, n, out)
    elif user_id is None:
        fail("give a USER_ID or --all-users")
    else:
        _recommend_one(settings, user_id, n)


# ---------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class Pair:
    user_id: int
    movie_id: int


def read_pairs(path: Path) -> list[Pair]:
    """``user_id,movie_id`` rows of a CSV file with that header; errors name file:line."""
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    pairs: list[Pair] = []
    with fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["user_id", "movie_id"]:
            fail(f"{path}:1: the header must start with user_id,movie_id (got {','.join(header)})")
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                fail(f"{path}:{line}: expected user_id,movie_id, got {','.join(row)!r}")
            try:
                pairs.append(Pair(int(row[0]), int(row[1])))
            except ValueError:
                fail(f"{path}:{line}: user_id and movie_id must be integers, got {row[:2]}")
    return pairs


def predict(
    pairs_csv: Path = typer.Argument(..., help="CSV with header user_id,movie_id."),
    out: Path = typer.Option(..., "--out", help="CSV output."),
) -> None:
    """Predicted rating of every user_id,movie_id pair, in order, with the source of each."""
    settings = get_settings()
    pairs = read_pairs(pairs_csv)
    rec = load_active(settings)
    with session_scope(settings.database_url) as session:
        ratings = ratings_of_users(session, (p.user_id for p in pairs))
    wanted: dict[int, list[int]] = defaultdict(list)
    for p in pairs:
        wanted[p.user_id].append(p.movie_id)
    answers: dict[tuple[int, int], Any] = {}
    for user, movies in tqdm(wanted.items(), desc="predict", unit="user", disable=len(wanted) < 50):
        for movie, pred in zip(
            movies, rec.predict_with_fallback(ratings.get(user, {}), movies), strict=True
        ):
            answers[(user, movie)] = pred
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "movie_id", "prediction", "source"])
        for p in pairs:
            pred = answers[(p.user_id, p.movie_id)]
            writer.writerow([p.user_id, p.movie_id, f"{pred.value:.4f}", pred.source])
    typer.echo(f"wrote {len(pairs)} predictions to {out}")


def register(cli: typer.Typer) -> None:
    """Attach the model commands to the top-level command."""
    cli.command("train")(train)
    cli.command("evaluate")(evaluate)
    cli.command("recommend")(recommend)
    cli.command("predict")(predict)
