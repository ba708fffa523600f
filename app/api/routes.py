"""The HTTP routes, thin: each hands its validated input to the serving logic and returns its answer.

Whether a route needs an API key is declared where it is routed: `public` holds the probes and the
page, which need none; every other route needs one wherever the server has keys (`OPEN_ROUTES` goes
to app/api/security.py's gate, which checks the key before the body is read, so a new route is
closed until it is put on `public`); `/metrics` needs one unless `metrics_need_key` is off.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.canvas_layout import CanvasLayout, canvas_layout
from app.api.deps import AdmittingDep, RuntimeDep, ServingDep
from app.api.metrics import exposition
from app.api.openapi import GENERATE_RESPONSES, RESUME_DESCRIPTION, RESUME_RESPONSES, STREAM_DESCRIPTION
from app.api.resumable import STREAM_ID_PATTERN
from app.api.schemas import GenerateRequest, GenerateResponse, Health, Info, Readiness
from app.api.serving import cancel_stream, describe, generate_response, resume_response
from app.api.web import index_page, static_files

router = APIRouter()
public = APIRouter()
"""Routes that need no API key: the probes, and the page (which asks for a key when the API answers 401)."""

OptionalBody = Annotated[GenerateRequest | None, Body(description="Every field is optional: no body is `{}`.")]


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Write a story, optionally streaming every denoising step",
    description=STREAM_DESCRIPTION,
    responses=GENERATE_RESPONSES,
)
async def generate(request: Request, serving: AdmittingDep, body: OptionalBody = None) -> Response:
    return await generate_response(body or GenerateRequest(), request, serving)


@router.post(
    "/canvas",
    response_model=CanvasLayout,
    summary="Where a request's fixed text lies, without writing the story",
    description="The same body and 422s as POST /generate; the answer is the sequence its story starts from "
    "(docs/infilling.md). Streams carry only what the model reveals: this is the rest.",
)
async def canvas(serving: ServingDep, body: OptionalBody = None) -> CanvasLayout:
    return canvas_layout(body or GenerateRequest(), serving.checkpoint, serving.settings.max_request_cost)


StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN, description="The stream's `X-Stream-ID` header.")]


@router.get(
    "/generate/{stream_id}",
    summary="Resume a stream after a dropped connection",
    description=RESUME_DESCRIPTION,
    response_class=Response,
    responses=RESUME_RESPONSES,
)
async def resume(
    stream_id: StreamId,
    serving: ServingDep,
    last_event_id: Annotated[int | None, Header(ge=0, description="The `id` of the last event received.")] = None,
) -> Response:
    return resume_response(stream_id, last_event_id, serving)


@router.delete(
    "/generate/{stream_id}",
    status_code=204,
    summary="Cancel a stream's story now, freeing its batch slot",
    response_class=Response,
    responses={404: RESUME_RESPONSES[404]},
)
async def cancel(stream_id: StreamId, serving: ServingDep) -> Response:
    return cancel_stream(stream_id, serving)


@public.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    return Health()


@public.get(
    "/ready",
    response_model=Readiness,
    summary="The model is loaded and the engine runs",
    responses={503: {"model": Readiness, "description": "Loading, failed or stopped."}},
)
async def ready(runtime: RuntimeDep) -> JSONResponse:
    readiness = Readiness(status=runtime.state, detail=runtime.detail)
    return JSONResponse(readiness.model_dump(), status_code=200 if runtime.ready else 503)


@router.get("/info", response_model=Info, summary="Model, device, limits, defaults and engine counters")
async def info(serving: ServingDep) -> Info:
    return describe(serving)


@router.get(
    "/metrics",
    summary="Prometheus metrics: model state, requests, batching, durations",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(exposition(runtime), media_type=CONTENT_TYPE_LATEST)


@public.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return index_page()


public.mount("/static", static_files(), name="static")

OPEN_ROUTES = frozenset(getattr(route, "path", "") for route in public.routes)
"""The paths of `public`: the ones the API key gate leaves open (app/api/security.py)."""
