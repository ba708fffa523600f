"""/generate's adapter on the serving core (app/api/submission.py): a request becomes a job, answered
as one JSON body or as a resumable stream of `step` events, then `done` (or `error`).

A stream reads its connection's `StreamReader` (app/api/resumable.py), which coalesces steps while
the client is slow, so a slow reader gets fewer, fuller events and never holds up the engine. When
the client goes away sse-starlette cancels the stream, and the reader is detached: the request keeps
running `resume_grace` seconds for the client to resume it (`GET /generate/{id}`), then is cancelled
and leaves the batch before the next step. A JSON answer's client that leaves frees its batch slot
before the next step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

from fastapi import Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from app import __version__
from app.api.admission import admit
from app.api.clients import client_of
from app.api.events import STEP_DATA, error_event, result
from app.api.jobs import build_job, preset_settings, sampler_defaults
from app.api.resumable import StreamReader
from app.api.runtime import Serving
from app.api.schemas import EngineInfo, ErrorEvent, GenerateRequest, Info
from app.api.submission import FAILURE_STATUS as FAILURE_STATUS  # re-exported: the status table
from app.api.submission import Submission, event_stream, json_response
from app.diffusion.checkpoint import Checkpoint
from app.diffusion.text import MASK_PLACEHOLDER
from app.engine import Failed, Finished, StepUpdate

STREAM_ID_HEADER = "X-Stream-ID"
RECONNECT_MS = 1000
"""The SSE `retry` of each connection's first event: how long an EventSource waits to reconnect."""


def wants_stream(body: GenerateRequest, request: Request) -> bool:
    """An explicit `stream` field wins; without one, `Accept: text/event-stream` asks for SSE."""
    if body.stream is not None:
        return body.stream
    return "text/event-stream" in request.headers.get("accept", "")


async def generate_response(body: GenerateRequest, request: Request, serving: Serving) -> Response:
    """Submit `body` to the engine and answer as the client asked: one JSON body, or an SSE stream."""
    streaming = wants_stream(body, request)
    job = build_job(body, serving.checkpoint, body.stream_every if streaming else None)
    job = dataclasses.replace(job, client=client_of(request, serving.settings))  # its quota and its turn
    admit(job.spec, serving, job.client)  # 422 over the cost cap, 429 past the client's quota or the timeout
    engine, timeout_s, checkpoint = serving.engine, serving.settings.timeout_s, serving.checkpoint
    if streaming:  # QueueFull -> 429, here and below
        return _stream_response(serving.streams.open(job, engine, timeout_s), serving)
    submission = Submission.start(job, engine, timeout_s)
    return await json_response(
        [submission],
        request,
        answer=lambda finished: result(job, finished[0], checkpoint),
        failure=lambda failed, _: error_event(failed, job, checkpoint),
    )


def resume_response(stream_id: str, last_event_id: int | None, serving: Serving) -> Response:
    """GET /generate/{id}: the stream again, its first event bringing the client up to date; 404
    (StreamNotFound) once it expired."""
    return _stream_response(serving.streams.get(stream_id).attach(last_event_id), serving)


def cancel_stream(stream_id: str, serving: Serving) -> Response:
    """DELETE /generate/{id}: cancel the story now, freeing its batch slot before the next step."""
    serving.streams.get(stream_id).cancel()
    return Response(status_code=204)


def _event(name: str, payload: str, event_id: int | None, first: bool) -> ServerSentEvent:
    # No id: a connection's `cancelled` / `taken_over` ending is not an event of the stream.
    event = None if event_id is None else str(event_id)
    return ServerSentEvent(payload, event=name, id=event, retry=RECONNECT_MS if first else None)


async def step_events(reader: StreamReader, checkpoint: Checkpoint) -> AsyncGenerator[ServerSentEvent, None]:
    """`step` events as the engine publishes them, then one `done` or `error` event."""
    job = reader.stream.job
    try:
        while (sent := await reader.next()) is not None:
            event_id, update = sent
            first = reader.delivered == 1
            if isinstance(update, StepUpdate):
                full, reader.full = reader.full, False  # a resume's full frame says so
                yield _event("step", STEP_DATA[job.stream_format](update, job, checkpoint, full), event_id, first)
            elif isinstance(update, Finished):
                yield _event("done", result(job, update, checkpoint).model_dump_json(), event_id, first)
            else:
                yield _event("error", error_event(update, job, checkpoint).model_dump_json(), event_id, first)
    finally:
        reader.close()  # the request runs on `resume_grace` for a reconnection, unless it ended


def _stream_response(reader: StreamReader, serving: Serving) -> EventSourceResponse:
    """The `text/event-stream` response of one connection to a stream; its id in `X-Stream-ID`."""
    stream = reader.stream

    def render_failure(err: Exception) -> list[ServerSentEvent]:
        message = f"streaming failed: {type(err).__name__}"
        stream.fail(Failed("internal", message))  # counted and logged as failed; a resume sees it too
        error = ErrorEvent(error="internal", detail=message)
        return [_event("error", error.model_dump_json(), stream.sent(0, 0), reader.delivered <= 1)]

    return event_stream(
        step_events(reader, serving.checkpoint),
        serving.settings,
        fail=lambda failed: stream.fail(_with_draft(failed, stream.latest)),
        render_failure=render_failure,
        close=reader.close,
        headers={STREAM_ID_HEADER: stream.id},
    )


def _with_draft(failed: Failed, latest: StepUpdate | None) -> Failed:
    """`failed` carrying the stream's latest draft, as a timeout's does (a shutdown's watcher has none)."""
    if failed.draft is not None or latest is None:
        return failed
    return dataclasses.replace(failed, draft=latest.ids)


def describe(serving: Serving) -> Info:
    """GET /info: the model, its limits and defaults, and the engine's counters."""
    checkpoint, engine = serving.checkpoint, serving.engine
    compiled, eager = engine.forward_shapes
    return Info(
        model=checkpoint.name,
        device=str(checkpoint.device),
        dtype=str(checkpoint.dtype).removeprefix("torch."),
        forward=engine.forward_name,
        warm_up_s=engine.warm_up_s or 0.0,
        compiled_shapes=[f"{rows}x{width}" for rows, width in compiled],
        eager_shapes={f"{rows}x{width}": why for (rows, width), why in eager.items()},
        parameters=checkpoint.num_parameters,
        max_length=checkpoint.max_positions,
        mask_placeholder=MASK_PLACEHOLDER,
        defaults=sampler_defaults(checkpoint),
        presets=preset_settings(checkpoint),
        engine=EngineInfo(
            max_batch=engine.max_batch,
            max_queue=engine.max_queue,
            timeout_s=serving.settings.timeout_s,
            **vars(engine.stats.snapshot()),
        ),
        version=__version__,
    )
