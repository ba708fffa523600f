"""The SSE stream of one request: `step` events, then `done` (or `error`), on sse-starlette.

The generator only reads the request's `UpdateChannel`, which coalesces steps while the client is
slow, so a slow reader gets fewer, fuller events and never holds up the engine. When the client
goes away sse-starlette cancels the generator, and its `finally` cancels the engine request, which
leaves the batch before the next step. On server shutdown the stream gets `shutdown_grace`
seconds to finish, then an `error` event.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.api.jobs import Job, result, step_event
from app.api.runtime import Serving
from app.api.schemas import ErrorEvent
from app.diffusion.checkpoint import Checkpoint
from app.engine import Failed, Finished, RequestHandle, StepUpdate, UpdateChannel

PING_COMMENT = "ping"


def _event(name: str, payload: str, ids: itertools.count[int]) -> ServerSentEvent:
    return ServerSentEvent(payload, event=name, id=str(next(ids)))


async def _fail_after_shutdown(shutdown: anyio.Event, grace_s: float, channel: UpdateChannel) -> None:
    await shutdown.wait()
    await asyncio.sleep(grace_s)
    channel.fail(Failed("shutdown", "the server is shutting down"))


async def step_events(
    job: Job,
    handle: RequestHandle,
    channel: UpdateChannel,
    checkpoint: Checkpoint,
    shutdown: anyio.Event,
    grace_s: float,
) -> AsyncIterator[ServerSentEvent]:
    """`step` events as the engine publishes them, then one `done` or `error` event."""
    ids = itertools.count(1)
    watcher = asyncio.get_running_loop().create_task(_fail_after_shutdown(shutdown, grace_s, channel))
    try:
        while (update := await channel.next()) is not None:
            if isinstance(update, StepUpdate):
                yield _event("step", step_event(update, checkpoint).model_dump_json(), ids)
            elif isinstance(update, Finished):
                yield _event("done", result(job, update, checkpoint).model_dump_json(), ids)
            else:
                error = ErrorEvent(error=update.reason, detail=update.message)
                yield _event("error", error.model_dump_json(), ids)
    except Exception as err:  # e.g. rendering failed: tell the client rather than cutting the stream
        handle.cancel()
        error = ErrorEvent(error="internal", detail=f"streaming failed: {type(err).__name__}")
        yield _event("error", error.model_dump_json(), ids)
    finally:
        watcher.cancel()
        handle.cancel()  # no-op once finished; frees the batch slot when the client left early


def event_stream_response(
    job: Job, handle: RequestHandle, channel: UpdateChannel, serving: Serving
) -> EventSourceResponse:
    """The `text/event-stream` response for a submitted request."""
    shutdown, settings = anyio.Event(), serving.settings
    return EventSourceResponse(
        step_events(job, handle, channel, serving.checkpoint, shutdown, settings.shutdown_grace),
        ping=settings.ping_interval,
        ping_message_factory=lambda: ServerSentEvent(comment=PING_COMMENT),
        shutdown_event=shutdown,
        # sse-starlette cancels the stream this long after shutdown began; ours ends it first.
        shutdown_grace_period=settings.shutdown_grace + 1.0,
        background=BackgroundTask(handle.cancel),  # also when the stream never started
    )
