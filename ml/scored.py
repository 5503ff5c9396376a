"""One scored movie, the type every list of movies has from ``ml`` to the API: the model's
answers (``ml.inference.Recommender``), the service's batched ranking and its result memo.
Plain data, no torch: the service imports it without loading the model's stack."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scored:
    """One movie of a list: its id, ranking score and predicted rating (NaN where the list does
    not rate, e.g. similar movies)."""

    movie_id: int
    score: float
    predicted_rating: float
