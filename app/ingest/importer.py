"""Import a detected data set into the store: parse, validate and write in one transaction."""

from __future__ import annotations

import queue
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from app.ingest.errors import IngestError, Problems
from app.ingest.formats import BLOCK_BYTES, Dataset, custom_csv, detect, iter_rating_chunks
from app.ingest.loader import RestartStaged, StoreWriter, WriteResult, open_writer


@dataclass(frozen=True)
class ImportSummary:
    """What an import did, for the command line and the tests."""

    release: str
    written: WriteResult
    ratings_read: int
    skipped: int
    skipped_examples: list[IngestError] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary as printable lines."""
        w = self.written
        out = [
            f"imported {self.release}: {self.ratings_read:,} ratings read in {self.seconds:.1f} s "
            f"({self.ratings_read / max(self.seconds, 1e-9):,.0f} ratings/s)",
            f"  movies:  {w.movies_added:,} added, {w.movies_updated:,} updated",
            f"  users:   {w.users_added:,} added",
            f"  ratings: {w.ratings_added:,} added, {w.ratings_updated:,} updated",
        ]
        if self.skipped:
            out.append(f"  skipped {self.skipped:,} invalid lines, first ones:")
            out.extend(f"    {example}" for example in self.skipped_examples)
        return out


def resolve_dataset(path: Path | None, ratings: Path | None, movies: Path | None) -> Dataset:
    """The data set named on the command line: a release (PATH) or ``--ratings [--movies]``."""
    if path is not None and (ratings is not None or movies is not None):
        raise IngestError(str(path), None, "give either PATH or --ratings/--movies, not both")
    if path is not None:
        return detect(path)
    if ratings is None:
        raise IngestError("--ratings", None, "give PATH, or --ratings FILE.csv [--movies FILE.csv]")
    return custom_csv(ratings, movies)


def import_dataset(
    database_url: str,
    dataset: Dataset,
    *,
    skip_invalid: bool = False,
    progress: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> ImportSummary:
    """Import ``dataset`` into the store; any invalid line aborts and leaves the store unchanged
    unless ``skip_invalid``, which drops such lines and reports them. ``block_bytes`` sets how
    much of the ratings file is parsed at a time."""
    try:
        return _import(database_url, dataset, skip_invalid, progress, block_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # read while importing
        source = dataset.ratings.archive or dataset.ratings.name
        raise IngestError(source, None, f"the zip archive is damaged: {exc}") from exc


def _import(
    database_url: str, dataset: Dataset, skip_invalid: bool, progress: bool, block_bytes: int
) -> ImportSummary:
    started = time.perf_counter()
    problems = Problems(skip=skip_invalid)
    movies = (
        dataset.parse_movies(dataset.movies, problems)
        if dataset.movies is not None and dataset.parse_movies is not None
        else None
    )
    now = int(time.time())
    with open_writer(database_url) as writer:
        known = writer.movie_ids()
        if movies is not None:
            known = np.union1d(known, movies["movie_id"].to_numpy())
            writer.write_movies(movies)

        mark = problems.mark()

        def chunks() -> Iterator[pd.DataFrame]:
            problems.rewind(mark)  # a second pass must not count the same lines twice
            return prefetch(
                iter_rating_chunks(
                    dataset, known, problems, now, progress=progress, block_bytes=block_bytes
                )
            )

        read, written = load_ratings(writer, chunks)
    return ImportSummary(
        release=dataset.release,
        written=written,
        ratings_read=read,
        skipped=problems.count,
        skipped_examples=list(problems.examples),
        seconds=time.perf_counter() - started,
    )


_DONE = object()


def prefetch(chunks: Iterator[pd.DataFrame], depth: int = 2) -> Generator[pd.DataFrame, None, None]:
    """Parse ahead in a thread while the caller writes: pandas' reader and numpy release the
    GIL for most of their work, so parsing overlaps the database's work on the previous chunk.
    Errors raised while parsing are raised here, in order."""
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                ready.put(chunk)
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            ready.put(exc)

    worker = threading.Thread(target=produce, name="ingest-parse", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def write_chunks(writer: StoreWriter, chunks: Iterable[pd.DataFrame]) -> int:
    """Feed rating chunks to a writer; returns how many ratings were written."""
    total = 0
    for chunk in chunks:
        writer.write_ratings(chunk)
        total += len(chunk)
    return total


def load_ratings(
    writer: StoreWriter, chunks: Callable[[], Iterable[pd.DataFrame]]
) -> tuple[int, WriteResult]:
    """Write every chunk and merge; when the writer asks (a duplicate pair met by the fast
    first-load path), stream the chunks a second time. Returns (ratings read, result)."""
    read = write_chunks(writer, chunks())
    try:
        return read, writer.finish()
    except RestartStaged:
        read = write_chunks(writer, chunks())
        return read, writer.finish()
