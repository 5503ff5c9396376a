"""MovieLens titles carry the release year: ``Toy Story (1995)`` -> ``("Toy Story", 1995)``."""

from __future__ import annotations

import re

# A trailing "(1995)", or a series range "(2007-2013)" / "(2016- )" whose first year is taken.
_YEAR_SUFFIX = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\s*\)\s*$")
MIN_YEAR = 1870
MAX_YEAR = 2100


def split_title(raw: str) -> tuple[str, int | None]:
    """Split a MovieLens title into its name and year; titles without a year keep ``None``.

    Articles moved to the end (``Matrix, The (1999)``) are kept as given.
    """
    raw = raw.strip()
    match = _YEAR_SUFFIX.match(raw)
    if match is None:
        return raw, None
    year = int(match.group("year"))
    title = match.group("title").strip()
    if not title or not MIN_YEAR <= year <= MAX_YEAR:
        return raw, None
    return title, year


def parse_year(raw: str) -> int | None:
    """A year field (``1995``, ``1995.0`` or empty) as an int, ``None`` when absent or odd."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        year = int(float(raw))
    except ValueError:
        return None
    return year if MIN_YEAR <= year <= MAX_YEAR else None
