"""``POST /v1/recommendations``: recommendations for a visitor's ratings, nothing stored."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from app.api.deps import ApiKeyDep, BatcherDep, MetricsDep, StateDep
from app.api.routers.params import make_filters
from app.api.schemas.common import problem_responses
from app.api.schemas.recommendations import RecommendationsOut, VisitorRequest
from app.services import recommendations as rec_service

router = APIRouter(
    prefix="/v1/recommendations",
    tags=["recommendations"],
    dependencies=[ApiKeyDep],
    responses=problem_responses(401),  # when MOVIEREC_API_KEYS is set
)


def recommendations_body(user_id: int | None, result: rec_service.Recommendations) -> bytes:
    """The JSON document of ``RecommendationsOut``, written by orjson straight from the
    service's dataclasses: the hot path builds no Pydantic model and validates nothing twice
    (every field is typed by the service; NaN would become null, as Pydantic writes it)."""
    return orjson.dumps(
        {
            "user_id": user_id,
            "model_version": result.model_version,
            "source": result.source,
            "items": result.items,
        }
    )


def recommendations_response(user_id: int | None, result: rec_service.Recommendations) -> Response:
    """The answer of both recommendation routes, with the model version in a header."""
    return Response(
        recommendations_body(user_id, result),
        media_type="application/json",
        headers={"X-Model-Version": str(result.model_version)},
    )


@router.post(
    "",
    response_model=RecommendationsOut,
    summary="Recommendations for a visitor's ratings (folded in, not stored)",
    responses=problem_responses(400, 404, 413, 422, 503),
)
async def visitor_recommendations(
    body: VisitorRequest,
    state: StateDep,
    batcher: BatcherDep,
    metrics: MetricsDep,
) -> Response:
    filters = make_filters(
        body.genres,
        body.year_min,
        body.year_max,
        body.exclude,
        None if state is None else state.catalogue,
    )
    ratings = [(r.movie_id, r.rating) for r in body.ratings]
    result = await rec_service.recommend_for_visitor(
        state, batcher, ratings, body.n, body.offset, filters
    )
    metrics.recommendations.labels(result.source).inc()
    return recommendations_response(None, result)
