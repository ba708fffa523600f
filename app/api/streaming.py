"""The SSE stream of one request: `step` events, then `done` (or `error`), on sse-starlette.

The generator only reads its connection's `StreamReader` (app/api/resumable.py), which coalesces
steps while the client is slow, so a slow reader gets fewer, fuller events and never holds up the
engine. When the client goes away sse-starlette cancels the generator, and its `finally` detaches
the reader: the request keeps running `resume_grace` seconds for the client to resume it
(`GET /generate/{id}`), then is cancelled and leaves the batch before the next step. On server
shutdown the stream gets `shutdown_grace` seconds to finish, then an `error` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.api.jobs import STEP_DATA, error_event, result
from app.api.resumable import ResumableStream, StreamReader
from app.api.runtime import Serving
from app.api.schemas import ErrorEvent
from app.diffusion.checkpoint import Checkpoint
from app.engine import Failed, Finished, StepUpdate

PING_COMMENT = "ping"
STREAM_ID_HEADER = "X-Stream-ID"
RECONNECT_MS = 1000
"""The SSE `retry` of each connection's first event: how long an EventSource waits to reconnect."""


def _event(name: str, payload: str, event_id: int | None, first: bool) -> ServerSentEvent:
    # No id (issue 29): a connection's `cancelled` / `taken_over` ending is not an event of the stream.
    event = None if event_id is None else str(event_id)
    return ServerSentEvent(payload, event=name, id=event, retry=RECONNECT_MS if first else None)


async def _fail_after_shutdown(shutdown: anyio.Event, grace_s: float, stream: ResumableStream) -> None:
    await shutdown.wait()
    await asyncio.sleep(grace_s)
    draft = None if stream.latest is None else stream.latest.ids  # issue 29: the draft, as a timeout's
    stream.fail(Failed("shutdown", "the server is shutting down", draft=draft))


async def step_events(
    reader: StreamReader, checkpoint: Checkpoint, shutdown: anyio.Event, grace_s: float
) -> AsyncIterator[ServerSentEvent]:
    """`step` events as the engine publishes them, then one `done` or `error` event."""
    stream, first = reader.stream, True
    watcher = asyncio.get_running_loop().create_task(_fail_after_shutdown(shutdown, grace_s, stream))
    try:
        while (sent := await reader.next()) is not None:
            event_id, update = sent
            if isinstance(update, StepUpdate):
                full, reader.full = reader.full, False  # issue 29: a resume's full frame says so
                data = STEP_DATA[stream.job.stream_format](update, stream.job, checkpoint, full)
                yield _event("step", data, event_id, first)
            elif isinstance(update, Finished):
                yield _event("done", result(stream.job, update, checkpoint).model_dump_json(), event_id, first)
            else:
                error = error_event(update, stream.job, checkpoint)
                yield _event("error", error.model_dump_json(), event_id, first)
            first = False
    except Exception as err:  # e.g. rendering failed: tell the client rather than cutting the stream
        stream.cancel()
        error = ErrorEvent(error="internal", detail=f"streaming failed: {type(err).__name__}")
        yield _event("error", error.model_dump_json(), stream.sent(0, 0), first)
    finally:
        watcher.cancel()
        reader.close()  # the request runs on `resume_grace` for a reconnection, unless it ended


def event_stream_response(reader: StreamReader, serving: Serving) -> EventSourceResponse:
    """The `text/event-stream` response of one connection to a stream; its id in `X-Stream-ID`."""
    shutdown, settings = anyio.Event(), serving.settings
    return EventSourceResponse(
        step_events(reader, serving.checkpoint, shutdown, settings.shutdown_grace),
        headers={STREAM_ID_HEADER: reader.stream.id},
        ping=settings.ping_interval,
        ping_message_factory=lambda: ServerSentEvent(comment=PING_COMMENT),
        shutdown_event=shutdown,
        # sse-starlette cancels the stream this long after shutdown began; ours ends it first.
        shutdown_grace_period=settings.shutdown_grace + 1.0,
        send_timeout=settings.send_timeout,  # a client that stopped reading is dropped
        background=BackgroundTask(reader.close),  # also when the stream never started
    )
