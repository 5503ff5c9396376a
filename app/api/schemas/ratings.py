"""Rating schemas."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas.common import UtcDatetime
from app.rating_scale import RATING_MAX, RATING_MIN, RATING_STEP, RULE


class RatingIn(BaseModel):
    model_config = ConfigDict(strict=True)  # a boolean is not a number, nor a string

    rating: float = Field(
        ge=RATING_MIN, le=RATING_MAX, multiple_of=RATING_STEP, description=f"The rating, {RULE}."
    )


class RatingOut(BaseModel):
    user_id: int = Field(description="Who rated.")
    movie_id: int = Field(description="The rated movie.")
    rating: float = Field(description="The rating, 0.5 to 5.")
    rated_at: UtcDatetime = Field(description="When the rating was last set.")
    title: str = Field(description="The rated movie's title.")
    year: int | None = Field(description="Its release year, when known.")
    genres: list[str] = Field(description="Its genres.")


class RatingPage(BaseModel):
    items: list[RatingOut] = Field(description="This page of ratings, newest first.")
    total: int = Field(description="How many ratings the user has.")
    limit: int = Field(description="Page size asked for.")
    offset: int = Field(description="How many ratings were skipped.")
