"""`movierec data ...` end to end through the Typer app: exit codes, messages, summaries."""

from __future__ import annotations

import zipfile
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from tests.app.ingest_fixtures import (
    RATINGS,
    snapshot,
    write_100k,
    write_csv,
    write_csv_release,
    zip_folder,
)

runner = CliRunner()


def test_import_release_then_stats(env, tmp_path: Path) -> None:
    archive = zip_folder(write_100k(tmp_path / "ml-100k"), tmp_path / "ml-100k.zip")
    result = runner.invoke(cli, ["data", "import", str(archive), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "imported movielens-100k" in result.output
    assert "ratings: 5 added, 0 updated" in result.output

    again = runner.invoke(cli, ["data", "import", str(archive), "--no-progress"])
    assert "ratings: 0 added, 0 updated" in again.output

    stats = runner.invoke(cli, ["data", "stats"])
    assert stats.exit_code == 0
    assert f"ratings: {len(RATINGS)}" in stats.output


def test_bad_line_exits_2_with_file_and_line(env, tmp_path: Path) -> None:
    movies = write_csv(tmp_path / "movies.csv", "movie_id,title", ["1,Heat (1995)"])
    ratings = write_csv(
        tmp_path / "ratings.csv", "user_id,movie_id,rating", ["1,1,4", "2,1,5.5", "3,1,3"]
    )
    result = runner.invoke(
        cli, ["data", "import", "--ratings", str(ratings), "--movies", str(movies), "--no-progress"]
    )
    assert result.exit_code == 2
    assert f"error: {ratings}:3: rating 5.5 is not between 0.5 and 5 in steps of 0.5" in (
        result.stderr
    )
    assert snapshot(env.url) == ({}, {}, {})

    skipped = runner.invoke(
        cli,
        ["data", "import", "--ratings", str(ratings), "--movies", str(movies), "--skip-invalid",
         "--no-progress"],
    )  # fmt: skip
    assert skipped.exit_code == 0
    assert "skipped 1 invalid lines" in skipped.output and f"{ratings}:3:" in skipped.output
    assert len(snapshot(env.url)[2]) == 2


def test_a_damaged_archive_exits_2_with_an_error_line(env, tmp_path: Path) -> None:
    folder = write_100k(tmp_path / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # stored: bytes as written
        for path in sorted(folder.iterdir()):
            zf.write(path, f"ml-100k/{path.name}")
    data = archive.read_bytes()
    first_line = (folder / "u.data").read_bytes().split(b"\n")[0]  # "user movie rating time"
    at = data.index(first_line)
    fields = first_line.split(b"\t")
    changed = b"\t".join([*fields[:2], b"1" if fields[2] != b"1" else b"2", *fields[3:]])
    archive.write_bytes(data[:at] + changed + data[at + len(first_line) :])  # a valid line, bad CRC

    result = runner.invoke(cli, ["data", "import", str(archive), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {archive}: the zip archive is damaged: Bad CRC-32")
    assert "Traceback" not in result.output
    assert snapshot(env.url) == ({}, {}, {})


def test_a_movie_id_twice_exits_2_naming_both_lines(env, tmp_path: Path) -> None:
    movies = write_csv(
        tmp_path / "movies.csv",
        "movie_id,title,genres",
        ["1,Heat (1995),Action", "2,Casino (1995),Drama", "1,Heat 2 (1996),Crime"],
    )
    ratings = write_csv(tmp_path / "ratings.csv", "user_id,movie_id,rating", ["1,1,4"])
    args = ["data", "import", "--ratings", str(ratings), "--movies", str(movies), "--no-progress"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"error: {movies}:4: movie id 1 is already on line 2" in result.stderr
    assert snapshot(env.url) == ({}, {}, {})
    skipped = runner.invoke(cli, [*args, "--skip-invalid"])
    assert skipped.exit_code == 0 and f"{movies}:4:" in skipped.output
    assert snapshot(env.url)[0][1] == ("Heat", 1995, "Action")  # the first line's movie


def test_usage_errors(env, tmp_path: Path) -> None:
    neither = runner.invoke(cli, ["data", "import"])
    assert neither.exit_code == 2 and "give PATH, or --ratings" in neither.stderr
    missing = runner.invoke(cli, ["data", "import", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such file or directory" in missing.stderr
    too_many = runner.invoke(
        cli, ["data", "synth", "--users", "2", "--movies", "2", "--ratings", "5"]
    )
    assert too_many.exit_code == 2 and "do not fit" in too_many.stderr


def test_synth_to_csv_and_into_store(env, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["data", "synth", "--users", "30", "--movies", "20", "--ratings", "300", "--seed", "4"]
    written = runner.invoke(cli, [*args, "--out", str(out), "--no-progress"])
    assert written.exit_code == 0, written.output
    assert (out / "ratings.csv").read_text().count("\n") == 301

    stored = runner.invoke(cli, [*args, "--no-progress"])
    assert stored.exit_code == 0, stored.output
    assert "300 ratings added" in stored.output
    assert len(snapshot(env.url)[2]) == 300


def test_fetch_when_present_does_nothing(env, tmp_path: Path) -> None:
    dest = write_100k(tmp_path / "data" / "ml-100k")  # the default destination under the env
    before = sorted(p.name for p in dest.iterdir())
    result = runner.invoke(cli, ["data", "fetch", "movielens-100k"])
    assert result.exit_code == 0
    assert "already in" in result.output
    assert sorted(p.name for p in dest.iterdir()) == before


def test_a_single_file_as_path_gets_a_hint(env, tmp_path: Path) -> None:
    """A CSV given as PATH: the error says how to import it (and the store is unchanged)."""
    ratings = write_csv(tmp_path / "ratings.csv", "user_id,movie_id,rating", ["1,1,4"])
    result = runner.invoke(cli, ["data", "import", str(ratings)])
    assert result.exit_code == 2
    assert f"error: {ratings}: not a directory or a zip archive; a CSV of ratings" in result.stderr
    assert f"movierec data import --ratings {ratings} [--movies MOVIES.csv]" in result.stderr
    assert "nothing was imported" in result.stderr

    movies = write_csv(tmp_path / "movies.csv", "movie_id,title", ["1,Heat (1995)"])
    result = runner.invoke(cli, ["data", "import", str(movies)])
    assert f"--ratings RATINGS.csv --movies {movies}" in result.stderr

    # A file of a MovieLens release: its folder is what to import.
    release = write_csv_release(tmp_path / "ml-latest-small")
    result = runner.invoke(cli, ["data", "import", str(release / "ratings.csv")])
    assert f"imported with its release folder: movierec data import {release}" in result.stderr
    assert snapshot(env.url) == ({}, {}, {})
