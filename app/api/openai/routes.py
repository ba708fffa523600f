"""The OpenAI-compatible routes, thin: `POST /v1/completions` and `GET /v1/models`, errors in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response

from app.api.deps import AdmittingDep, ServingDep
from app.api.openai.errors import OpenAIRoute
from app.api.openai.protocol import Completion, CompletionRequest, ErrorResponse, ModelList
from app.api.openai.serving import completion_response, model_list

router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["OpenAI-compatible"])

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "An invalid or unsupported field, named by `error.param`.",
        404: "No such model (`error.code`: model_not_found).",
        429: "The server is busy; see Retry-After.",
        503: "The model is not loaded yet, or the server is shutting down.",
    }.items()
}


@router.post(
    "/completions",
    response_model=Completion,
    summary="OpenAI-compatible completions: n stories per prompt, as JSON or `text_completion` chunks",
    description="With `stream`: `data: {text_completion chunk}` events, each with the text that became final "
    "since the previous one (or, with `diffusing`, the whole draft of each step), then `data: [DONE]`.",
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
async def completions(request: Request, body: Annotated[CompletionRequest, Body()], serving: AdmittingDep) -> Response:
    return await completion_response(body, request, serving)


@router.get("/models", response_model=ModelList, summary="The model this server serves", responses=ERRORS)
async def models(serving: ServingDep) -> ModelList:
    return model_list(serving)
