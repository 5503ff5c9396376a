"""`data stats`: counts, density, histogram, activity distributions and newest rating, in SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from app.ingest.formats import detect
from app.ingest.importer import import_dataset
from app.ingest.stats import Distribution, store_stats
from tests.app.ingest_fixtures import write_1m


def test_stats_of_a_small_release(database, tmp_path: Path) -> None:
    import_dataset(database.url, detect(write_1m(tmp_path / "ml-1m")), progress=False)
    stats = store_stats(database.url)

    assert (stats.movies, stats.users, stats.ratings) == (4, 3, 5)
    assert stats.density == 5 / 12
    assert stats.histogram == {1.0: 1, 2.0: 1, 3.0: 1, 4.0: 1, 5.0: 1}
    # users rated 2, 2, 1 movies; movies were rated 2, 1, 1, 1 times
    assert stats.per_user == Distribution(min=1, median=2.0, mean=5 / 3, max=2)
    assert stats.per_movie == Distribution(min=1, median=1.0, mean=1.25, max=2)
    newest = stats.newest_rating
    assert newest is not None
    assert newest.replace(tzinfo=newest.tzinfo or UTC) == datetime.fromtimestamp(891717742, UTC)
    text = "\n".join(stats.lines())
    assert "density: 41.6667%" in text and "median 2.0" in text


def test_stats_of_an_empty_store(database) -> None:
    stats = store_stats(database.url)
    assert (stats.movies, stats.ratings, stats.density, stats.histogram) == (0, 0, 0.0, {})
    assert stats.per_user is None and stats.newest_rating is None
    assert stats.lines()[0] == "movies:  0"
