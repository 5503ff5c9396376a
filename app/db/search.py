"""The search key of a title: what ``GET /v1/movies?q=`` compares, the same on every database.

``search_key`` folds a title, or what someone typed, into lower-case words without accents,
punctuation or article: "Godfather, The", "The Godfather" and "the godfather" all become
"godfather"; "Amélie" becomes "amelie"; "City of Lost Children, The (Cité des enfants perdus,
La)" becomes "city of lost children cite des enfants perdus". Titles store their key in
``movies.search_title`` (the importer, the ORM and the migration that added the column all call
this function), and a query is folded by the same function, so a database only ever compares
plain lower-case ASCII-or-letters strings with ``=`` and ``LIKE``: no collation, extension or
accent function that SQLite and PostgreSQL would disagree on.

``RATING_COUNTS`` recounts ``movies.rating_count`` (the popularity that orders matches of equal
rank) from the ratings table in one statement, valid on both databases.
"""

from __future__ import annotations

import re
import unicodedata

# An article moved behind the title by MovieLens ("Matrix, The", "Auberge espagnole, L'"):
# at the end, or before either bracket of an alternative title. MovieLens's languages.
_TRAILING_ARTICLE = re.compile(
    r",\s*(?:the|a|an|la|le|les|l['’]|il|lo|gli|i|el|los|las|un|une|das|der|die|den|det|de|het|"
    r"een|ein|eine|o|os|as|uma|um)\s*(?=[()]|$)"
)
# A leading English article ("The Godfather" as people type it). Other languages' leading
# articles stay: "Die Hard" must still start with "die".
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+(?=\S)")
_NOT_A_WORD = re.compile(r"[\W_]+")


def _fold(text: str) -> str:
    """Lower case, no accents (NFKD, combining marks dropped), ``ß`` as ``ss``."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def search_key(text: str) -> str:
    """``text`` as lower-case words without accents, punctuation or article ("" for none)."""
    folded = _TRAILING_ARTICLE.sub("", _fold(text).strip())
    words = _NOT_A_WORD.sub(" ", folded).strip()
    return _LEADING_ARTICLE.sub("", words)


RATING_COUNTS = """
UPDATE movies SET rating_count = counts.n
FROM (SELECT movie_id, count(*) AS n FROM ratings GROUP BY movie_id) AS counts
WHERE movies.id = counts.movie_id AND movies.rating_count <> counts.n
"""
