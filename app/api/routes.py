"""Thin HTTP routes: validate, hand the request to the engine, and answer with JSON or SSE."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from app import __version__
from app.api.generation import build_job, result, sampler_defaults
from app.api.openapi import schema_ref
from app.api.runtime import ModelRuntime
from app.api.schemas import (
    EngineInfo,
    ErrorEvent,
    GenerateRequest,
    GenerateResponse,
    Health,
    Info,
    Readiness,
    StepEvent,
)
from app.api.streaming import event_stream_response
from app.diffusion.text import MASK_PLACEHOLDER
from app.engine import Failed, Finished, Outcome, UpdateChannel

router = APIRouter()

FAILURE_STATUS = {"timeout": 504, "shutdown": 503, "internal": 500}

STREAM_DESCRIPTION = (
    "With `stream: true` (or `Accept: text/event-stream` and no `stream` field): a stream of "
    "`step` events (one per `stream_every` steps and the last, data: StepEvent), then one `done` "
    "event (data: GenerateResponse) or one `error` event (data: ErrorEvent). Every event has an "
    "increasing `id`; `: ping` comments keep idle connections open."
)


SSE_ITEM_SCHEMA = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["step", "done", "error"]},
        "id": {"type": "string", "description": "1, 2, 3, ... in the order sent."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"oneOf": [schema_ref(StepEvent), schema_ref(GenerateResponse), schema_ref(ErrorEvent)]},
        },
    },
}
"""One SSE event (OpenAPI 3.2 `itemSchema`): step -> StepEvent, done -> GenerateResponse, error -> ErrorEvent."""


def runtime_of(request: Request) -> ModelRuntime:
    """The lifespan-owned runtime of this app."""
    return request.app.state.runtime


def ready_runtime(runtime: ModelRuntime = Depends(runtime_of)) -> ModelRuntime:
    """The runtime, if it can serve; 503 while the model loads or after it failed."""
    if not runtime.ready:
        raise HTTPException(503, detail=f"the model is {runtime.state}", headers={"Retry-After": "5"})
    return runtime


def wants_stream(body: GenerateRequest, request: Request) -> bool:
    """An explicit `stream` field wins; without one, `Accept: text/event-stream` asks for SSE."""
    if body.stream is not None:
        return body.stream
    return "text/event-stream" in request.headers.get("accept", "")


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body was already read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _outcome_unless_gone(channel: UpdateChannel, request: Request) -> Outcome | None:
    """The request's outcome, or None if the client disconnected first."""
    outcome = asyncio.ensure_future(channel.outcome())
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({outcome, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        outcome.cancel()
        gone.cancel()
    return outcome.result() if outcome in done else None


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Write a story, optionally streaming every denoising step",
    description=STREAM_DESCRIPTION,
    responses={
        200: {"content": {"text/event-stream": {"itemSchema": SSE_ITEM_SCHEMA}}},
        422: {"description": "Invalid request: `detail` names the field and the reason."},
        429: {"description": "Every batch slot and queue place is taken; see Retry-After."},
        503: {"description": "The model is not loaded yet, or the server is shutting down."},
        504: {"model": ErrorEvent, "description": "The request ran past the server's timeout."},
    },
)
async def generate(
    request: Request,
    body: GenerateRequest = Body(...),
    runtime: ModelRuntime = Depends(ready_runtime),
) -> Response:
    checkpoint, engine, settings = runtime.checkpoint, runtime.engine, runtime.settings
    assert checkpoint is not None and engine is not None
    streaming = wants_stream(body, request)
    job = build_job(body, checkpoint, body.stream_every if streaming else None)
    channel = UpdateChannel(asyncio.get_running_loop())
    handle = engine.submit(job.spec, channel.publish, settings.timeout)  # QueueFull -> 429
    if streaming:
        return event_stream_response(job, handle, channel, checkpoint, settings.ping_interval, settings.shutdown_grace)
    try:
        outcome = await _outcome_unless_gone(channel, request)
    finally:
        handle.cancel()  # no-op once finished
    if outcome is None:
        return Response(status_code=499)  # nobody is listening; uvicorn drops it
    if isinstance(outcome, Failed):
        return JSONResponse(
            ErrorEvent(error=outcome.reason, detail=outcome.message).model_dump(),
            status_code=FAILURE_STATUS[outcome.reason],
        )
    assert isinstance(outcome, Finished)
    return JSONResponse(result(job, outcome, checkpoint).model_dump())


@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    summary="The model is loaded and the engine runs",
    responses={503: {"model": Readiness, "description": "Loading, failed or stopped."}},
)
async def ready(runtime: ModelRuntime = Depends(runtime_of)) -> JSONResponse:
    readiness = Readiness(status=runtime.state, detail=runtime.error)  # type: ignore[arg-type]
    return JSONResponse(readiness.model_dump(), status_code=200 if runtime.ready else 503)


@router.get("/info", response_model=Info, summary="Model, device, limits, defaults and engine counters")
async def info(runtime: ModelRuntime = Depends(ready_runtime)) -> Info:
    checkpoint, engine, settings = runtime.checkpoint, runtime.engine, runtime.settings
    assert checkpoint is not None and engine is not None
    stats = engine.stats.snapshot()
    return Info(
        model=checkpoint.source,
        device=str(checkpoint.device),
        dtype=str(checkpoint.dtype).removeprefix("torch."),
        parameters=checkpoint.num_parameters,
        max_length=checkpoint.max_positions,
        mask_placeholder=MASK_PLACEHOLDER,
        defaults=sampler_defaults(checkpoint),
        engine=EngineInfo(
            max_batch=engine.max_batch,
            max_queue=engine.max_queue,
            timeout_s=settings.timeout,
            **vars(stats),
        ),
        version=__version__,
    )
