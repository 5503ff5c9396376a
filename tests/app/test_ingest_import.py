"""Import semantics on SQLite and PostgreSQL: idempotence, newest rating wins, users created on
their first rating, invalid input leaves the store exactly as it was, --skip-invalid."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from psycopg.errors import IntegrityError
from sqlalchemy import text

from app.db.session import make_engine
from app.ingest import loader
from app.ingest.errors import IngestError
from app.ingest.formats import custom_csv, detect
from app.ingest.importer import ImportSummary, import_dataset, prefetch
from tests.app.ingest_fixtures import snapshot, write_csv, write_csv_release

RATINGS_HEADER = "user_id,movie_id,rating,timestamp"
MOVIES_HEADER = "movie_id,title,genres"
GOOD_MOVIES = ["1,Toy Story (1995),Animation", "2,Heat (1995),Action|Crime", '3,"Net, The (1995)",']


def run(
    url: str, tmp_path: Path, ratings: list[str], movies: list[str] | None = None, **options: object
) -> ImportSummary:
    """Import ratings lines (and movies lines) through the ``--ratings/--movies`` format."""
    ratings_path = write_csv(tmp_path / "ratings.csv", RATINGS_HEADER, ratings)
    movies_path = write_csv(tmp_path / "movies.csv", MOVIES_HEADER, movies) if movies else None
    return import_dataset(url, custom_csv(ratings_path, movies_path), progress=False, **options)  # type: ignore[arg-type]  # fmt: skip


def test_reimport_is_idempotent(database, tmp_path: Path) -> None:
    source = write_csv_release(tmp_path / "ml-latest-small")
    first = import_dataset(database.url, detect(source), progress=False)
    before = snapshot(database.url)
    again = import_dataset(database.url, detect(source), progress=False)

    assert snapshot(database.url) == before
    assert first.written.ratings_added == 5
    w = again.written
    assert (w.movies_added, w.movies_updated, w.users_added) == (0, 0, 0)
    assert (w.ratings_added, w.ratings_updated) == (0, 0)


def test_newer_rating_replaces_older_and_older_does_not(database, tmp_path: Path) -> None:
    run(database.url, tmp_path, ["1,1,3.0,1000", "1,2,2.5,1000"], GOOD_MOVIES)
    newer = run(database.url, tmp_path, ["1,1,5.0,2000"])
    assert snapshot(database.url)[2][(1, 1)] == (5.0, 2000)
    assert (newer.written.ratings_added, newer.written.ratings_updated) == (0, 1)

    older = run(database.url, tmp_path, ["1,1,1.0,1500", "1,2,4.0,999"])
    ratings = snapshot(database.url)[2]
    assert ratings[(1, 1)] == (5.0, 2000)
    assert ratings[(1, 2)] == (2.5, 1000)
    assert older.written.ratings_updated == 0


def test_within_one_file_newest_wins_then_last_line(database, tmp_path: Path) -> None:
    lines = [
        "1,1,3.0,2000", "1,1,4.0,1000",  # newest wins although it comes first
        "1,2,1.0,1000", "1,2,4.5,1000",  # same time: the last line wins
        "2,3,2.0,500",
    ]  # fmt: skip
    summary = run(database.url, tmp_path, lines, GOOD_MOVIES)
    _, users, ratings = snapshot(database.url)
    assert ratings == {(1, 1): (3.0, 2000), (1, 2): (4.5, 1000), (2, 3): (2.0, 500)}
    assert users == {1: 1000, 2: 500}
    assert summary.written.ratings_added == 3


def test_user_created_at_moves_to_an_earlier_first_rating(database, tmp_path: Path) -> None:
    run(database.url, tmp_path, ["1,1,3.0,5000"], GOOD_MOVIES)
    run(database.url, tmp_path, ["1,2,3.0,4000", "1,3,3.0,9000"])
    assert snapshot(database.url)[1] == {1: 4000}


def test_movie_update_and_no_timestamp(database, tmp_path: Path) -> None:
    run(database.url, tmp_path, ["1,1,3.0,100"], GOOD_MOVIES)
    path = write_csv(tmp_path / "r.csv", "user_id,movie_id,rating", ["2,1,4.0"])
    movies = write_csv(
        tmp_path / "m.csv", "movie_id,title", ["1,Toy Story (1995)", "9,Heat (1995)"]
    )
    summary = import_dataset(database.url, custom_csv(path, movies), progress=False)
    stored_movies, _, ratings = snapshot(database.url)
    assert stored_movies[1] == ("Toy Story", 1995, "")  # genres column absent: none
    assert stored_movies[9] == ("Heat", 1995, "")
    assert (summary.written.movies_added, summary.written.movies_updated) == (1, 1)
    assert ratings[(2, 1)][1] > 1_700_000_000  # no timestamp column: the import time


BAD_LINES = [
    ("1,2", "expected 4 fields separated by ',', found 2"),
    ("1,2,3,4,5", "expected 4 fields separated by ',', found 5"),
    ("1,2,5.5,100", "rating 5.5 is not between 0.5 and 5 in steps of 0.5"),
    ("1,2,0,100", "rating 0 is not between 0.5 and 5 in steps of 0.5"),
    ("1,2,4.25,100", "rating 4.25 is not between 0.5 and 5 in steps of 0.5"),
    ("1,2,0.7,100", "rating 0.7 is not between 0.5 and 5 in steps of 0.5"),
    ("1,2,abc,100", "rating 'abc' is not a number"),
    ("x,2,3,100", "user_id 'x' is not a number"),
    ("1.5,2,3,100", "user_id 1.5 is not an integer id"),
    ("1,2,3,-5", "timestamp -5 is not a valid Unix time"),
    ("1,77,3,100", "movie 77 is neither in the store nor in the movies file"),
    ("1,,3,100", "movie_id is empty"),
]


@pytest.mark.parametrize(("bad", "problem"), BAD_LINES)
def test_invalid_line_leaves_store_unchanged(
    database, tmp_path: Path, bad: str, problem: str
) -> None:
    run(database.url, tmp_path, ["1,1,3.0,100"], GOOD_MOVIES)
    before = snapshot(database.url)
    # Many valid lines first, parsed in small blocks: earlier blocks are written before the
    # bad line is met, and must be rolled back.
    lines = [f"{u},2,4.0,200" for u in range(2, 60)] + [bad, "7,3,2.0,300"]
    with pytest.raises(IngestError) as caught:
        run(database.url, tmp_path, lines, block_bytes=64)
    assert caught.value.file == str(tmp_path / "ratings.csv")
    assert caught.value.line == len(lines)  # header is line 1, the bad line the one before last
    assert problem in caught.value.problem
    assert snapshot(database.url) == before


def test_undecodable_ratings_bytes(database, tmp_path: Path) -> None:
    run(database.url, tmp_path, ["1,1,3.0,100"], GOOD_MOVIES)
    before = snapshot(database.url)
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"user_id,movie_id,rating,timestamp\n2,1,4.0,100\n2,2,4\xff.0,100\n")
    with pytest.raises(IngestError) as caught:
        import_dataset(database.url, custom_csv(path, None), progress=False)
    assert (caught.value.line, "not valid utf-8" in caught.value.problem) == (3, True)
    assert snapshot(database.url) == before


def test_undecodable_movies_file(database, tmp_path: Path) -> None:
    ratings = write_csv(tmp_path / "ratings.csv", RATINGS_HEADER, ["1,1,3.0,100"])
    movies = tmp_path / "movies.csv"
    movies.write_bytes(
        "movie_id,title\n1,Toy Story (1995)\n2,Misérables (1995)\n".encode("latin-1")
    )
    with pytest.raises(IngestError) as caught:
        import_dataset(database.url, custom_csv(ratings, movies), progress=False)
    assert str(caught.value).startswith(f"{movies}:3: bytes b'\\xe9rab' are not valid utf-8")
    assert snapshot(database.url) == ({}, {}, {})


def test_latin1_release_with_control_bytes_is_refused(database, tmp_path: Path) -> None:
    """cp1252 quotes (0x92) are C1 controls in latin-1: a sign of the wrong encoding."""
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_bytes(b"1::1::4::100\n")
    (root / "movies.dat").write_bytes(b"1::Schindler\x92s List (1993)::Drama\n")
    (root / "users.dat").write_bytes(b"1::F::1::10::48067\n")
    with pytest.raises(IngestError, match=r"movies\.dat:1: byte 0x92 is a control character"):
        import_dataset(database.url, detect(root), progress=False)
    assert snapshot(database.url) == ({}, {}, {})


def test_malformed_movies_line(database, tmp_path: Path) -> None:
    with pytest.raises(IngestError) as caught:
        run(database.url, tmp_path, ["1,1,3.0,100"], ["1,Toy Story (1995),Animation", "2,Heat"])
    assert (caught.value.line, caught.value.problem) == (3, "expected 3 fields, found 2")


def test_skip_invalid_imports_the_rest_and_reports(database, tmp_path: Path) -> None:
    lines = ["1,1,3.0,100", "1,2,9,100", "2,1,abc,100", "2,2,4.0,100", "3,99,4.0,100", "1,2"]
    summary = run(database.url, tmp_path, lines, GOOD_MOVIES, skip_invalid=True, block_bytes=32)
    _, _, ratings = snapshot(database.url)
    assert set(ratings) == {(1, 1), (2, 2)}
    assert summary.skipped == 4
    where = [(e.line, e.problem.split(" ")[0]) for e in summary.skipped_examples]
    assert where == [(3, "rating"), (4, "rating"), (6, "movie"), (7, "expected")]
    assert any("skipped 4 invalid lines" in line for line in summary.lines())


def test_skip_invalid_counts_beyond_the_examples(database, tmp_path: Path) -> None:
    lines = ["1,1,3.0,100"] + [f"{u},1,0,100" for u in range(2, 30)]
    summary = run(database.url, tmp_path, lines, GOOD_MOVIES, skip_invalid=True)
    assert summary.skipped == 28
    assert len(summary.skipped_examples) == 5
    assert snapshot(database.url)[2] == {(1, 1): (3.0, 100)}


def test_blank_lines_are_ignored(database, tmp_path: Path) -> None:
    summary = run(database.url, tmp_path, ["1,1,3.0,100", "", "2,1,4.0,100", ""], GOOD_MOVIES)
    assert summary.written.ratings_added == 2


def ratings_keys(url: str) -> list[tuple[str, str]]:
    """Constraints and indexes of the ratings table, as PostgreSQL defines them."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'ratings'::regclass UNION ALL "
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ratings' "
                    "ORDER BY 1"
                )
            )
            return [(row[0], row[1]) for row in rows]
    finally:
        engine.dispose()


@pytest.fixture
def bulk(database, monkeypatch: pytest.MonkeyPatch):
    """PostgreSQL with the first-load fast path taken for any size."""
    if database.backend != "postgresql":
        pytest.skip("the first-load fast path is PostgreSQL's")
    monkeypatch.setattr(loader, "BULK_MIN_ROWS", 1)
    keys = ratings_keys(database.url)
    # key, two foreign keys, check; the key's index, the movie_id index and the covering index
    assert len(keys) == 7
    return database, keys


def test_postgres_first_load_copies_directly_and_rebuilds_keys(bulk, tmp_path: Path) -> None:
    database, keys = bulk
    lines = ["1,1,3.0,2000", "1,2,4.5,1000", "2,3,2.0,500", "2,1,5.0,700"]
    summary = run(database.url, tmp_path, lines, GOOD_MOVIES)
    _, users, ratings = snapshot(database.url)
    assert ratings == {(1, 1): (3.0, 2000), (1, 2): (4.5, 1000), (2, 3): (2.0, 500),
                       (2, 1): (5.0, 700)}  # fmt: skip
    assert users == {1: 1000, 2: 500}
    assert (summary.written.ratings_added, summary.written.users_added) == (4, 2)
    assert ratings_keys(database.url) == keys


def test_postgres_first_load_with_duplicate_pairs_restarts_staged(bulk, tmp_path: Path) -> None:
    database, keys = bulk
    lines = ["1,1,3.0,2000", "1,1,4.0,1000", "1,2,1.0,1000", "1,2,4.5,1000", "2,3,2.0,500",
             "2,3,9,500"]  # fmt: skip
    summary = run(database.url, tmp_path, lines, GOOD_MOVIES, skip_invalid=True)
    expected = {(1, 1): (3.0, 2000), (1, 2): (4.5, 1000), (2, 3): (2.0, 500)}
    assert snapshot(database.url)[2] == expected
    assert (summary.written.ratings_added, summary.ratings_read, summary.skipped) == (3, 5, 1)
    assert [e.line for e in summary.skipped_examples] == [7]  # counted once, not per pass
    assert ratings_keys(database.url) == keys


def test_postgres_first_load_streams_chunks_through_one_copy(bulk, tmp_path: Path) -> None:
    """Many small blocks go through the one open COPY: same rows as one block would give."""
    database, keys = bulk
    lines = [f"{user},{movie},{(user + movie) % 9 / 2 + 0.5},{1000 + user}"
             for user in range(1, 4) for movie in range(1, 4)]  # fmt: skip
    summary = run(database.url, tmp_path, lines, GOOD_MOVIES, block_bytes=16)
    ratings = snapshot(database.url)[2]
    assert len(ratings) == 9 and summary.written.ratings_added == 9
    assert ratings[(2, 3)] == ((2 + 3) % 9 / 2 + 0.5, 1002)
    assert ratings_keys(database.url) == keys
    rebuilt = {name for name, _ in keys if not name.startswith("ck_")}  # the check is kept
    assert rebuilt <= set(summary.written.phases)  # each rebuild timed, for the benchmark


def test_postgres_invalid_line_in_a_later_chunk_aborts_the_open_copy(bulk, tmp_path: Path) -> None:
    """A parse error after the direct COPY has started cancels it; the store is unchanged and
    its connection usable for the next import."""
    database, keys = bulk
    lines = ["1,1,3.0,2000", "1,2,4.5,1000", "2,3,2.0,500", "2,1,7.0,700"]
    with pytest.raises(IngestError, match=r"ratings\.csv:5: rating 7\.0 is not between"):
        run(database.url, tmp_path, lines, GOOD_MOVIES, block_bytes=16)
    assert snapshot(database.url) == ({}, {}, {})
    assert ratings_keys(database.url) == keys
    assert run(database.url, tmp_path, lines[:3], GOOD_MOVIES).written.ratings_added == 3


def test_postgres_failure_while_rebuilding_keys_rolls_back(bulk) -> None:
    database, keys = bulk
    chunk = pd.DataFrame({"user_id": [1], "movie_id": [404], "rating": [3.0], "timestamp": [1],
                          "line": [2]})  # fmt: skip
    with pytest.raises(IntegrityError), loader.open_writer(database.url) as writer:
        writer.write_ratings(chunk)  # a movie that does not exist: its foreign key refuses it
        writer.finish()
    assert ratings_keys(database.url) == keys
    assert snapshot(database.url) == ({}, {}, {})


def test_prefetch_keeps_order_raises_in_order_and_stops_early() -> None:
    frames = [pd.DataFrame({"n": [i]}) for i in range(6)]

    def failing() -> Iterator[pd.DataFrame]:
        yield from frames[:3]
        raise IngestError("ratings.csv", 9, "bad")

    assert [int(f["n"].iloc[0]) for f in prefetch(iter(frames))] == list(range(6))
    seen = []
    with pytest.raises(IngestError, match=r"ratings\.csv:9: bad"):
        for frame in prefetch(failing()):
            seen.append(int(frame["n"].iloc[0]))
    assert seen == [0, 1, 2]

    produced = []

    def endless() -> Iterator[pd.DataFrame]:
        for i in range(10_000):
            produced.append(i)
            yield pd.DataFrame({"n": [i]})

    stream = prefetch(endless(), depth=2)
    next(stream)
    stream.close()  # the consumer gives up: the producer thread stops soon after
    assert len(produced) < 10


def test_first_load_with_a_dangling_movie_is_refused_and_rolled_back(database) -> None:
    """Both first-load paths check foreign keys once at the end; a rating that slipped past
    validation (here written straight to the writer) is refused there."""
    chunk = pd.DataFrame({"user_id": [1], "movie_id": [404], "rating": [3.0], "timestamp": [1],
                          "line": [2]})  # fmt: skip
    refused = pytest.raises((IntegrityError, sqlite3.IntegrityError))
    with refused, loader.open_writer(database.url) as writer:
        writer.write_ratings(chunk)
        writer.finish()
    assert snapshot(database.url) == ({}, {}, {})


def search_columns(url: str) -> dict[int, tuple[str, int]]:
    """``{movie_id: (search_title, rating_count)}``."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, search_title, rating_count FROM movies"))
            return {row[0]: (row[1], row[2]) for row in rows}
    finally:
        engine.dispose()


def test_import_writes_search_keys_and_recounts_ratings(database, tmp_path: Path) -> None:
    run(database.url, tmp_path, ["1,1,3.0,100", "2,1,4.0,100", "1,3,2.0,100"], GOOD_MOVIES)
    assert search_columns(database.url) == {1: ("toy story", 2), 2: ("heat", 0), 3: ("net", 1)}
    # A later import: a renamed movie, a new rating, a replaced one (no new count).
    movies = ["2,Heat (1995),Action", '3,"Net, Le (1995)",']
    run(database.url, tmp_path, ["3,2,5.0,200", "1,1,5.0,300"], movies)
    assert search_columns(database.url) == {1: ("toy story", 2), 2: ("heat", 1), 3: ("net", 1)}


def test_postgres_first_load_counts_ratings(bulk, tmp_path: Path) -> None:
    database, _ = bulk
    run(database.url, tmp_path, ["1,1,3.0,2000", "2,1,4.5,1000", "2,3,2.0,500"], GOOD_MOVIES)
    assert search_columns(database.url) == {1: ("toy story", 2), 2: ("heat", 0), 3: ("net", 1)}


def test_search_key_longer_than_its_title_is_stored(database, tmp_path: Path) -> None:
    """Folding can lengthen a title ("ß" → "ss"): a 400-character title still imports."""
    run(database.url, tmp_path, ["1,1,3.0,100"], [f"1,{'ß' * 400} (1995),"])
    assert search_columns(database.url) == {1: ("s" * 800, 1)}
