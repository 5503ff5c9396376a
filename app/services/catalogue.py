"""The catalogue held in memory: movie ids, titles, years and genres as numpy arrays.

Recommendation filters (genres, year range) become boolean masks computed from these arrays,
never a SQL query per request. The catalogue is reloaded when any movie row changes (the
catalogue version, bumped by the database on every write to ``movies``, moves) and whenever a
new model is swapped in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from app.repositories import movies as movies_repo

NO_YEAR = -1


def split_genres(genres: str) -> list[str]:
    """``"Action|Comedy"`` → ``["Action", "Comedy"]``; empty or unknown genres → ``[]``."""
    return [g for g in genres.split("|") if g and g != "(no genres listed)" and g != "unknown"]


@dataclass(frozen=True)
class Catalogue:
    """Movie metadata in arrays indexed by catalogue row (movies ordered by id)."""

    ids: np.ndarray  # (M,) int64, ascending
    titles: list[str]
    years: np.ndarray  # (M,) int32, NO_YEAR when unknown
    genres: list[list[str]]
    genre_masks: dict[str, np.ndarray]  # lower-cased genre → (M,) bool
    signature: int  # the catalogue version it was read at
    row_of: dict[int, int] = field(repr=False)

    @classmethod
    def from_rows(
        cls, rows: Sequence[tuple[int, str, int | None, str]], signature: int
    ) -> Catalogue:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        years = np.fromiter(
            (NO_YEAR if r[2] is None else r[2] for r in rows), dtype=np.int32, count=len(rows)
        )
        genres = [split_genres(r[3] or "") for r in rows]
        masks: dict[str, np.ndarray] = {}
        for row, names in enumerate(genres):
            for name in names:
                key = name.lower()
                if key not in masks:
                    masks[key] = np.zeros(len(rows), dtype=bool)
                masks[key][row] = True
        return cls(
            ids=ids,
            titles=[r[1] for r in rows],
            years=years,
            genres=genres,
            genre_masks=masks,
            signature=signature,
            row_of={int(m): i for i, m in enumerate(ids)},
        )

    @classmethod
    def load(cls, session: Session) -> Catalogue:
        """Read the whole movies table once (a few MB even for 87,000 movies)."""
        signature = movies_repo.signature(session)
        return cls.from_rows(movies_repo.all_rows(session), signature)

    def __len__(self) -> int:
        return len(self.ids)

    def unknown(self, movie_ids: Iterable[int]) -> list[int]:
        """The ids in ``movie_ids`` that are not in the catalogue, in order, without repeats."""
        return list(dict.fromkeys(m for m in movie_ids if m not in self.row_of))

    def filter_mask(
        self, genres: Sequence[str], year_min: int | None, year_max: int | None
    ) -> np.ndarray | None:
        """(M,) bool: movies with any of ``genres`` within the year range; None = no filter.

        An unknown genre matches nothing. A movie without a year fails any year bound.
        """
        if not genres and year_min is None and year_max is None:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        if genres:
            any_genre = np.zeros(len(self.ids), dtype=bool)
            for name in genres:
                found = self.genre_masks.get(name.lower())
                if found is not None:
                    any_genre |= found
            mask &= any_genre
        if year_min is not None:
            mask &= self.years >= year_min
        if year_max is not None:
            mask &= (self.years <= year_max) & (self.years != NO_YEAR)
        return mask

    def year_of(self, row: int) -> int | None:
        year = int(self.years[row])
        return None if year == NO_YEAR else year
