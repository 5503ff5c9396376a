"""``/v1/users/{user_id}``: recommendations, predictions and ratings of a stored user."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from app.api.deps import ApiKeyDep, SessionDep, StateDep
from app.api.routers.params import (
    ID_LIST_PATTERN,
    ExcludeQuery,
    GenresQuery,
    YearMaxQuery,
    YearMinQuery,
    make_filters,
    parse_ids,
)
from app.api.routers.recommendations import recommendations_response
from app.api.schemas.common import CANONICAL, MAX_ID, problem_responses
from app.api.schemas.ratings import RatingIn, RatingOut, RatingPage
from app.api.schemas.recommendations import PredictionOut, PredictionsOut, RecommendationsOut
from app.db.models import Movie, Rating
from app.services import ratings as ratings_service
from app.services import recommendations as rec_service
from app.services.catalogue import split_genres

router = APIRouter(
    prefix="/v1/users/{user_id}",
    tags=["users"],
    dependencies=[ApiKeyDep],
    responses=problem_responses(401),  # when MOVIEREC_API_KEYS is set
)
UserId = Annotated[int, Path(ge=0, le=MAX_ID, description="A user id."), CANONICAL]
MovieId = Annotated[int, Path(ge=0, le=MAX_ID, description="A movie id."), CANONICAL]


def rating_out(rating: Rating, movie: Movie) -> RatingOut:
    return RatingOut(
        user_id=rating.user_id,
        movie_id=rating.movie_id,
        rating=rating.rating,
        rated_at=rating.rated_at,
        title=movie.title,
        year=movie.year,
        genres=split_genres(movie.genres),
    )


@router.get(
    "/recommendations",
    response_model=RecommendationsOut,
    summary="Top-N unseen movies for a user",
    responses=problem_responses(404, 422, 503),
)
async def user_recommendations(
    request: Request,
    user_id: UserId,
    n: Annotated[int, Query(ge=1, le=100, description="How many movies."), CANONICAL] = 10,
    offset: Annotated[
        int, Query(ge=0, le=10_000, description="Top movies to skip."), CANONICAL
    ] = 0,
    genres: GenresQuery = None,
    year_min: YearMinQuery = None,
    year_max: YearMaxQuery = None,
    exclude: ExcludeQuery = None,
) -> Response:
    # The hot route reads app state directly (no dependencies to solve per request).
    app_state = request.app.state
    holder = app_state.holder
    state = holder.state
    filters = make_filters(
        genres, year_min, year_max, exclude, None if state is None else state.catalogue
    )
    result = await rec_service.recommend_for_user(
        holder.ratings,
        state,
        app_state.batcher,
        user_id,
        n,
        offset,
        filters,
        memo=app_state.memo,
    )
    app_state.metrics.recommendations.labels(result.source).inc()
    return recommendations_response(user_id, result)


@router.get(
    "/predictions",
    summary="Predicted ratings of chosen movies for a user",
    responses=problem_responses(404, 422, 503),
)
async def user_predictions(
    session: SessionDep,
    state: StateDep,
    user_id: UserId,
    movie_ids: Annotated[
        str,
        Query(
            min_length=1,
            max_length=20_000,
            json_schema_extra={"pattern": ID_LIST_PATTERN},
            description="Comma list of movie ids (a movie not in the catalogue is a 404).",
        ),
    ],
) -> PredictionsOut:
    ids = parse_ids(movie_ids, "movie_ids")
    version, predicted = rec_service.predict_for_user(session, state, user_id, ids)
    return PredictionsOut(
        user_id=user_id,
        model_version=version,
        items=[PredictionOut(movie_id=m, predicted_rating=predicted[m]) for m in ids],
    )


@router.get("/ratings", summary="A user's ratings", responses=problem_responses(404, 422, 503))
async def list_ratings(
    session: SessionDep,
    user_id: UserId,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size."), CANONICAL] = 50,
    offset: Annotated[
        int, Query(ge=0, le=10_000_000, description="Ratings to skip."), CANONICAL
    ] = 0,
) -> RatingPage:
    ratings, total = ratings_service.list_ratings(session, user_id, limit=limit, offset=offset)
    return RatingPage(
        items=[rating_out(r, m) for r, m in ratings], total=total, limit=limit, offset=offset
    )


@router.put(
    "/ratings/{movie_id}",
    summary="Rate a movie (creates the user if new)",
    responses={
        201: {"model": RatingOut, "description": "Created"},
        **problem_responses(400, 404, 413, 422, 503),
    },
)
async def put_rating(
    session: SessionDep, response: Response, user_id: UserId, movie_id: MovieId, body: RatingIn
) -> RatingOut:
    rating, movie, created = ratings_service.set_rating(session, user_id, movie_id, body.rating)
    response.status_code = 201 if created else 200
    return rating_out(rating, movie)


@router.delete(
    "/ratings/{movie_id}",
    summary="Remove a rating",
    status_code=204,
    responses=problem_responses(404, 422, 503),
)
async def delete_rating(session: SessionDep, user_id: UserId, movie_id: MovieId) -> Response:
    ratings_service.delete_rating(session, user_id, movie_id)
    return Response(status_code=204)
