"""``POST /score`` and ``POST /score/batch``.

In a running service these requests are answered by :class:`service.asgi.FrontDoor`
before FastAPI routes them; these routes run the same data-plane calls and exist for the
OpenAPI document and for an app used without the front door.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import DataPlaneDep, SettingsDep, require_api_key
from service.api.responses import errors, ok
from service.asgi import read_body
from service.schemas import BatchResponse, ScoreResponse

router = APIRouter(tags=["scoring"], dependencies=[Depends(require_api_key)])
_ERRORS = errors(401, 413, 422, 502, 503, 504)


def _body(name: str) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


@router.post(
    "/score",
    summary="Score one transaction",
    response_class=Response,
    responses={**ok(ScoreResponse, "The decision."), **_ERRORS},
    openapi_extra=_body("Transaction"),
)
async def score(request: Request, dataplane: DataPlaneDep, settings: SettingsDep) -> Response:
    """Decide whether one transaction is anomalous, with reasons and the deciding versions."""
    body = await read_body(request.scope, request.receive, settings.max_body_bytes)
    return Response(await dataplane.score_one(body), media_type="application/json")


@router.post(
    "/score/batch",
    summary="Score many transactions",
    response_class=Response,
    responses={**ok(BatchResponse, "Decisions in request order."), **_ERRORS},
    openapi_extra=_body("TransactionBatch"),
)
async def score_batch(request: Request, dataplane: DataPlaneDep, settings: SettingsDep) -> Response:
    """Score up to the batch limit in one call: one model version answers them all, in order."""
    body = await read_body(request.scope, request.receive, settings.max_body_bytes)
    return Response(await dataplane.score_batch(body), media_type="application/json")
