"""``search_key``: the folding that title search compares (app.db.search)."""

from __future__ import annotations

import pytest

from app.db.search import search_key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Godfather, The", "godfather"),
        ("The Godfather", "godfather"),
        ("  the   GODFATHER  ", "godfather"),
        ("Auberge espagnole, L'", "auberge espagnole"),
        ("Auberge espagnole, L’", "auberge espagnole"),
        ("Amélie", "amelie"),
        ("Straße", "strasse"),
        ("Léon: The Professional", "leon the professional"),
        ("City of Lost Children, The (Cité des enfants perdus, La)",
         "city of lost children cite des enfants perdus"),
        ("Die Hard", "die hard"),  # only English articles are dropped in front
        ("A Bug's Life", "bug s life"),
        ("Bug's Life, A", "bug s life"),
        ("The", "the"),  # an article alone is a word to look for
        ("M*A*S*H", "m a s h"),
        ("%_", ""),
        ("七人の侍", "七人の侍"),
    ],
)  # fmt: skip
def test_search_key(text: str, key: str) -> None:
    assert search_key(text) == key
