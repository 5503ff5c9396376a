"""The one rule for a rating, everywhere (import, API, visitors): 0.5 to 5 in steps of 0.5.

Every MovieLens release fits it (100K and 1M: whole stars; 10M and later: half stars). The
importer checks whole columns with :func:`valid_ratings`, the API's schemas use the constants
and :func:`check` states the rule in one sentence for every message.
"""

from __future__ import annotations

import numpy as np

RATING_MIN = 0.5
RATING_MAX = 5.0
RATING_STEP = 0.5
RULE = "between 0.5 and 5 in steps of 0.5"


def valid_ratings(values: np.ndarray) -> np.ndarray:
    """(N,) bool: which ratings keep the rule (NaN does not)."""
    steps = values / RATING_STEP
    return (values >= RATING_MIN) & (values <= RATING_MAX) & (np.floor(steps) == steps)


def is_valid_rating(value: float) -> bool:
    """Whether one rating keeps the rule (a boolean is not a rating)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return bool(valid_ratings(np.array([float(value)]))[0])
