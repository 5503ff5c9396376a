"""One rule for a rating: the importer, the API's writes and visitors' ratings agree."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from app.api.schemas.ratings import RatingIn
from app.api.schemas.recommendations import VisitorRating
from app.rating_scale import is_valid_rating, valid_ratings
from app.services.errors import InvalidInputError
from app.services.ratings import check_rating

VALUES = [0.5, 1, 1.5, 3, 4.5, 5, 5.0, 0, 0.25, 0.7, 3.3, 4.25, 4.75, 5.5, -1, float("nan")]
VALID = {0.5, 1, 1.5, 3, 4.5, 5}


def accepted_by_schema(model: type[BaseModel], value: float) -> bool:
    try:
        model.model_validate({"movie_id": 1, "rating": value})
    except ValidationError:
        return False
    return True


def accepted_by_service(value: float) -> bool:
    try:
        check_rating(value)
    except InvalidInputError:
        return False
    return True


@pytest.mark.parametrize("value", VALUES)
def test_every_reader_of_a_rating_keeps_the_same_rule(value: float) -> None:
    expected = value in VALID
    assert bool(valid_ratings(np.array([value]))[0]) is expected  # the importer
    assert is_valid_rating(value) is expected
    assert accepted_by_service(value) is expected
    assert accepted_by_schema(RatingIn, value) is expected
    assert accepted_by_schema(VisitorRating, value) is expected
