"""The serving logic behind the routes: a request becomes an engine job, answered as JSON or as SSE.

A client that leaves frees its batch slot before the next step; a stream's, `resume_grace` seconds
later unless it resumed (resumable.py). sse-starlette watches a stream's connection itself
(streaming.py). A JSON answer cannot start before the outcome decides its status,
and Starlette only offers a non-blocking `Request.is_disconnected()` poll, so the answer waits for
whichever comes first, the outcome or the client's `http.disconnect` (as vLLM's `with_cancellation`).
"""

from __future__ import annotations

import asyncio
import dataclasses

import anyio
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from app import __version__
from app.api.admission import admit
from app.api.clients import client_of
from app.api.jobs import Job, build_job, error_event, preset_settings, result, sampler_defaults
from app.api.request_log import log_generation
from app.api.runtime import Serving
from app.api.schemas import EngineInfo, GenerateRequest, Info
from app.api.security import model_name
from app.api.streaming import event_stream_response
from app.diffusion.text import MASK_PLACEHOLDER
from app.engine import Failed, Outcome, RequestHandle, UpdateChannel
from app.engine.request import FailureReason

FAILURE_STATUS: dict[FailureReason, int] = {
    "timeout": 504,
    "shutdown": 503,
    "internal": 500,
    "cancelled": 499,  # issue 29: stream endings only, never a JSON answer's status
    "taken_over": 409,
}
"""The status of a JSON answer for each way a request can fail."""

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it, uvicorn drops it


def wants_stream(body: GenerateRequest, request: Request) -> bool:
    """An explicit `stream` field wins; without one, `Accept: text/event-stream` asks for SSE."""
    if body.stream is not None:
        return body.stream
    return "text/event-stream" in request.headers.get("accept", "")


async def generate_response(body: GenerateRequest, request: Request, serving: Serving) -> Response:
    """Submit `body` to the engine and answer as the client asked: one JSON body, or an SSE stream."""
    streaming = wants_stream(body, request)
    job = build_job(body, serving.checkpoint, body.stream_every if streaming else None)
    job = dataclasses.replace(job, client=client_of(request, serving.settings))  # issue 29: quotas and turns
    admit(job.spec, serving, job.client)  # 422 over the cost cap, 429 past the client's quota or the timeout
    if streaming:  # QueueFull -> 429, here and below
        return event_stream_response(serving.streams.open(job, serving.engine, serving.settings.timeout), serving)
    channel = UpdateChannel(asyncio.get_running_loop())
    handle = serving.engine.submit(job.spec, channel.publish, serving.settings.timeout, job.request_id, job.client)
    return await _json_response(job, handle, channel, request, serving)


def resume_response(stream_id: str, last_event_id: int | None, serving: Serving) -> Response:
    """GET /generate/{id}: the stream again, its first event bringing the client up to date; 404
    (StreamNotFound) once it expired."""
    return event_stream_response(serving.streams.get(stream_id).attach(last_event_id), serving)


def cancel_stream(stream_id: str, serving: Serving) -> Response:
    """DELETE /generate/{id}: cancel the story now, freeing its batch slot before the next step."""
    serving.streams.get(stream_id).cancel()
    return Response(status_code=204)


async def _json_response(
    job: Job, handle: RequestHandle, channel: UpdateChannel, request: Request, serving: Serving
) -> Response:
    """The story or the failure as one JSON body, once the engine is done with the request."""
    try:
        outcome = await outcome_unless_gone(channel, request)
    finally:
        handle.cancel()  # no-op once finished; frees the batch slot when the client left
    log_generation(handle, outcome or "cancelled")
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(outcome, Failed):
        error = error_event(outcome, job, serving.checkpoint)
        return JSONResponse(error.model_dump(), status_code=FAILURE_STATUS[outcome.reason])
    return JSONResponse(result(job, outcome, serving.checkpoint).model_dump())


async def outcome_unless_gone(channel: UpdateChannel, request: Request) -> Outcome | None:
    """The request's outcome, or None if the client disconnected first."""
    async with anyio.create_task_group() as group:

        async def watch_client() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass  # the body was read already: nothing but the disconnect can arrive
            group.cancel_scope.cancel()

        group.start_soon(watch_client)
        outcome = await channel.outcome()
        group.cancel_scope.cancel()
        return outcome
    return None  # the watcher cancelled the wait: the client left first


def describe(serving: Serving) -> Info:
    """GET /info: the model, its limits and defaults, and the engine's counters."""
    checkpoint, engine = serving.checkpoint, serving.engine
    return Info(
        model=model_name(checkpoint.source),
        device=str(checkpoint.device),
        dtype=str(checkpoint.dtype).removeprefix("torch."),
        forward=engine.forward_name,
        parameters=checkpoint.num_parameters,
        max_length=checkpoint.max_positions,
        mask_placeholder=MASK_PLACEHOLDER,
        defaults=sampler_defaults(checkpoint),
        presets=preset_settings(checkpoint),
        engine=EngineInfo(
            max_batch=engine.max_batch,
            max_queue=engine.max_queue,
            timeout_s=serving.settings.timeout,
            **vars(engine.stats.snapshot()),
        ),
        version=__version__,
    )
