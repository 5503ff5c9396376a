"""Recommendation and prediction schemas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.schemas.common import MAX_ID, json_integer
from app.rating_scale import RATING_MAX, RATING_MIN, RATING_STEP, RULE


class RecommendedMovie(BaseModel):
    movie_id: int = Field(description="The recommended movie.")
    title: str = Field(description="Its title.")
    year: int | None = Field(description="Release year, when known.")
    genres: list[str] = Field(description="Its genres.")
    score: float = Field(description="Ranking score from the model (higher ranks first).")
    predicted_rating: float | None = Field(
        description="The rating the model expects this user to give, on the 0.5–5 scale."
    )


class RecommendationsOut(BaseModel):
    user_id: int | None = Field(description="The user, or null for a visitor.")
    model_version: int = Field(description="Id of the model version that produced the list.")
    source: Literal["model", "popular"] = Field(
        description="`model`, or `popular` when there were no ratings to fold in."
    )
    items: list[RecommendedMovie] = Field(description="Best first; never a movie already rated.")


class VisitorRating(BaseModel):
    model_config = ConfigDict(strict=True)  # a boolean is not a number, nor a string

    movie_id: int = Field(ge=0, le=MAX_ID, description="A movie of the catalogue.")
    rating: float = Field(
        ge=RATING_MIN,
        le=RATING_MAX,
        multiple_of=RATING_STEP,
        description=f"The visitor's rating, {RULE}.",
    )

    _integers = field_validator("movie_id", mode="before")(json_integer)


class VisitorRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # a boolean is not a number, nor a string

    ratings: list[VisitorRating] = Field(
        default_factory=list,
        max_length=5000,
        description="The visitor's ratings; nothing is stored. Empty → popular films.",
    )
    n: int = Field(10, ge=1, le=100, description="How many movies to return.")
    offset: int = Field(0, ge=0, le=10_000, description="How many top movies to skip.")
    genres: list[Annotated[str, Field(max_length=100)]] = Field(
        default_factory=list, max_length=50, description="Keep movies with any of these genres."
    )
    year_min: int | None = Field(None, ge=0, le=9999, description="Earliest release year.")
    year_max: int | None = Field(None, ge=0, le=9999, description="Latest release year.")
    exclude: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(
        default_factory=list, max_length=5000, description="Movie ids never to return."
    )

    _integers = field_validator("n", "offset", "year_min", "year_max", "exclude", mode="before")(
        json_integer
    )


class PredictionOut(BaseModel):
    movie_id: int = Field(description="The movie asked about.")
    predicted_rating: float | None = Field(
        description="The rating the model predicts, or null when it cannot predict one."
    )


class PredictionsOut(BaseModel):
    user_id: int = Field(description="The user.")
    model_version: int = Field(description="Id of the model version that predicted.")
    items: list[PredictionOut] = Field(description="One entry per requested movie, in order.")


class SimilarOut(BaseModel):
    movie_id: int = Field(description="The movie the others are similar to.")
    model_version: int = Field(description="Id of the model version whose item vectors were used.")
    items: list[RecommendedMovie] = Field(description="Most similar first.")
