"""``/v1/movies``: search, one movie, similar movies."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import SessionDep, StateDep
from app.api.routers.params import parse_genres
from app.api.schemas.common import CANONICAL, MAX_ID, problem_responses
from app.api.schemas.movies import MovieOut, MoviePage
from app.api.schemas.recommendations import RecommendedMovie, SimilarOut
from app.db.models import Movie
from app.services import movies as movies_service
from app.services import recommendations as rec_service
from app.services.catalogue import split_genres
from app.services.errors import InvalidInputError

router = APIRouter(prefix="/v1/movies", tags=["movies"])
MovieId = Annotated[int, Path(ge=0, le=MAX_ID, description="A movie id."), CANONICAL]


def movie_out(movie: Movie) -> MovieOut:
    return MovieOut(
        movie_id=movie.id, title=movie.title, year=movie.year, genres=split_genres(movie.genres)
    )


@router.get("", summary="Search the catalogue", responses=problem_responses(422, 503))
async def search_movies(
    session: SessionDep,
    state: StateDep,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Title search as people type: case, accents, punctuation and a leading "
            "or trailing article are ignored (`the godfather` finds `Godfather, The`). Exact "
            "matches first, then titles starting with it, then titles containing it; the most "
            "rated first within each.",
        ),
    ] = None,
    genre: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Has this genre (any case). A genre the catalogue does not have is a "
            "422 that lists the known ones.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size."), CANONICAL] = 20,
    offset: Annotated[
        int, Query(ge=0, le=10_000_000, description="Matches to skip."), CANONICAL
    ] = 0,
) -> MoviePage:
    if genre:
        # The serving catalogue's genres (without a model loaded, names are taken as given).
        names = parse_genres(genre, None if state is None else state.catalogue, field="genre")
        if len(names) != 1:
            raise InvalidInputError("genre: one genre name, not a list", field="genre")
        genre = names[0]
    movies, total = movies_service.search_movies(
        session, q=q, genre=genre, limit=limit, offset=offset
    )
    return MoviePage(items=[movie_out(m) for m in movies], total=total, limit=limit, offset=offset)


@router.get("/{movie_id}", summary="One movie", responses=problem_responses(404, 422, 503))
async def get_movie(session: SessionDep, movie_id: MovieId) -> MovieOut:
    return movie_out(movies_service.get_movie(session, movie_id))


@router.get(
    "/{movie_id}/similar",
    summary="Movies similar to this one (the model's item–item weights)",
    responses=problem_responses(404, 422, 503),
)
async def similar_movies(
    state: StateDep,
    movie_id: MovieId,
    n: Annotated[int, Query(ge=1, le=100, description="How many."), CANONICAL] = 10,
) -> SimilarOut:
    result = rec_service.similar_movies(state, movie_id, n)
    return SimilarOut(
        movie_id=movie_id,
        model_version=result.model_version,
        items=[RecommendedMovie(**asdict(item)) for item in result.items],
    )
