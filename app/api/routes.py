"""The HTTP routes, thin: each hands its validated input to the serving logic and returns its answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import RuntimeDep, ServingDep
from app.api.metrics import exposition
from app.api.openapi import GENERATE_RESPONSES, STREAM_DESCRIPTION
from app.api.schemas import GenerateRequest, GenerateResponse, Health, Info, Readiness
from app.api.serving import describe, generate_response
from app.api.web import index_page, static_files

router = APIRouter()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Write a story, optionally streaming every denoising step",
    description=STREAM_DESCRIPTION,
    responses=GENERATE_RESPONSES,
)
async def generate(request: Request, body: Annotated[GenerateRequest, Body()], serving: ServingDep) -> Response:
    return await generate_response(body, request, serving)


@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    summary="The model is loaded and the engine runs",
    responses={503: {"model": Readiness, "description": "Loading, failed or stopped."}},
)
async def ready(runtime: RuntimeDep) -> JSONResponse:
    readiness = Readiness(status=runtime.state, detail=runtime.error)
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


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return index_page()


router.mount("/static", static_files(), name="static")
