"""Every MovieLens release (and RecBole atomic files) imports to the same store, from a folder
or from a zip archive, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ingest.errors import IngestError
from app.ingest.formats import detect
from app.ingest.importer import import_dataset
from app.ingest.titles import split_title
from tests.app.ingest_fixtures import (
    EXPECTED_MOVIES,
    EXPECTED_RATINGS,
    RELEASES,
    snapshot,
    write_100k,
    write_csv_release,
    zip_folder,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Matrix, The (1999)", ("Matrix, The", 1999)),
        ("Babylon 5", ("Babylon 5", None)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
        ("Stranger Things (2016– )", ("Stranger Things", 2016)),
        ("(500) Days of Summer (2009)", ("(500) Days of Summer", 2009)),
        ("City of Lost Children, The (Cité des enfants perdus, La) (1995) ",
         ("City of Lost Children, The (Cité des enfants perdus, La)", 1995)),
        ("1900 (Novecento) (1976)", ("1900 (Novecento)", 1976)),
        ("(1995)", ("(1995)", None)),
    ],
)  # fmt: skip
def test_split_title(raw: str, expected: tuple[str, int | None]) -> None:
    assert split_title(raw) == expected


@pytest.mark.parametrize("packaging", ["folder", "zip"])
@pytest.mark.parametrize("release", list(RELEASES))
def test_release_imports_to_the_same_store(
    database, tmp_path: Path, release: str, packaging: str
) -> None:
    folder_name, write = RELEASES[release]
    source = write(tmp_path / folder_name)
    if packaging == "zip":
        source = zip_folder(source, tmp_path / f"{folder_name}.zip")

    dataset = detect(source)
    summary = import_dataset(database.url, dataset, progress=False)

    assert dataset.release == release
    movies, users, ratings = snapshot(database.url)
    assert movies == EXPECTED_MOVIES
    assert ratings == EXPECTED_RATINGS
    assert users == {1: 881250949, 2: 878887116, 3: 886397596}  # first rating of each user
    w = summary.written
    assert (w.movies_added, w.users_added, w.ratings_added) == (4, 3, 5)
    assert (w.movies_updated, w.ratings_updated, summary.skipped) == (0, 0, 0)


def test_latin1_title_bytes_in_100k(tmp_path: Path) -> None:
    """u.item really holds the latin-1 byte 0xe9 for é, and it comes back as é."""
    folder = write_100k(tmp_path / "ml-100k")
    assert b"Mis\xe9rables, Les (1995)" in (folder / "u.item").read_bytes()


def test_quoted_csv_titles(tmp_path: Path) -> None:
    folder = write_csv_release(tmp_path / "ml-latest-small")
    assert (
        b'2,"Mis\xc3\xa9rables, Les (1995)",Drama|Musical' in (folder / "movies.csv").read_bytes()
    )


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({}, "no MovieLens ratings file found"),
        ({"u.data": b"1\t1\t4\t5\n"}, "u.item is missing"),
        ({"u.data": b"", "ratings.csv": b""}, "several ratings files"),
        ({"ratings.csv": b"a,b,c\n", "movies.csv": b""}, "lacks user_id, movie_id, rating"),
    ],
)
def test_detection_errors(tmp_path: Path, files: dict[str, bytes], problem: str) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(IngestError, match=problem):
        detect(tmp_path)


def test_not_a_release(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    with pytest.raises(IngestError, match="not a directory or a zip archive"):
        detect(plain)
    with pytest.raises(IngestError, match="no such file"):
        detect(tmp_path / "missing")
