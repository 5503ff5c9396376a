"""Movie schemas."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MovieOut(BaseModel):
    movie_id: int = Field(description="The movie's id (MovieLens ids are kept as given).")
    title: str = Field(description="Title without the year.")
    year: int | None = Field(description="Release year, when known.")
    genres: list[str] = Field(description="Genres, empty when unknown.")


class MoviePage(BaseModel):
    items: list[MovieOut] = Field(description="This page of movies, ordered by id.")
    total: int = Field(description="How many movies match the search in all.")
    limit: int = Field(description="Page size asked for.")
    offset: int = Field(description="How many matches were skipped.")
