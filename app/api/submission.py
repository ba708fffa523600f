"""The one serving core that every front end adapts: a job into the engine, its outcome as a JSON
answer, or its updates as a server-sent event stream.

/generate (app/api/serving.py) and /v1 (app/api/openai/) are adapters: request → jobs, update →
event. What they share lives here once:
- `submit`, the only call into `Engine.submit`;
- `json_response`: the race between the outcomes and the client's `http.disconnect` (Starlette only
  offers a non-blocking `Request.is_disconnected()` poll, so the answer waits for whichever comes
  first, as vLLM's `with_cancellation`), and `FAILURE_STATUS`, the status of each way a request fails;
- `event_stream`: one sse-starlette response (ping comments, send timeout, shutdown grace, close),
  one shutdown watcher that fails what is still running `shutdown_grace_s` seconds after shutdown
  began, and one rule for a failure while rendering: logged with its traceback, then told to the
  client in the front end's own shape, never swallowed.
Resumable streams (app/api/resumable.py) read the engine through an `UpdateChannel` as JSON answers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.api.jobs import Job
from app.api.request_log import Conclusion, log_generation
from app.config import Settings
from app.engine import Engine, Failed, Finished, Outcome, RequestHandle, UpdateChannel
from app.engine.request import FailureReason, Publish

log = logging.getLogger(__name__)

FAILURE_STATUS: dict[FailureReason, int] = {
    "timeout": 504,
    "shutdown": 503,
    "internal": 500,
    "cancelled": 499,
    "taken_over": 409,
}
"""The status of a JSON answer for each way a request can fail."""

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads it, uvicorn drops it
PING_COMMENT = "ping"
SHUTDOWN_MESSAGE = "the server is shutting down"


def submit(job: Job, engine: Engine, timeout_s: float, publish: Publish) -> RequestHandle:
    """Hand `job` to the engine (QueueFull: 429, EngineStopped: 503); the engine calls `publish` with
    every update. The one way into `Engine.submit`, for every front end."""
    return engine.submit(job.spec, publish, timeout_s, job.request_id, job.client)


@dataclass
class Submission:
    """One engine request read through its own channel: what JSON answers and /v1 streams wait on."""

    job: Job
    handle: RequestHandle
    channel: UpdateChannel
    log_fields: dict[str, Any]  # what its generation log line adds, e.g. its choice index

    @classmethod
    def start(cls, job: Job, engine: Engine, timeout_s: float, **log_fields: Any) -> Submission:
        channel = UpdateChannel(asyncio.get_running_loop())
        return cls(job, submit(job, engine, timeout_s, channel.publish), channel, log_fields)

    def log(self, conclusion: Conclusion) -> None:
        log_generation(self.handle, conclusion, **self.log_fields)


def cancel_all(submissions: Iterable[Submission]) -> None:
    """Free every batch slot (a no-op for requests that ended)."""
    for submission in submissions:
        submission.handle.cancel()


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


async def outcomes(submissions: Sequence[Submission], request: Request) -> list[Outcome] | None:
    """Each submission's outcome in order, up to the first failure; None if the client left first.
    Every request is cancelled after (no-op once finished; frees the slots of the others)."""
    ended: list[Outcome] = []
    try:
        for submission in submissions:
            outcome = await outcome_unless_gone(submission.channel, request)
            submission.log(outcome or "cancelled")
            if outcome is None:
                return None
            ended.append(outcome)
            if isinstance(outcome, Failed):
                break
    finally:
        cancel_all(submissions)
    return ended


async def json_response(
    submissions: Sequence[Submission],
    request: Request,
    answer: Callable[[list[Finished]], BaseModel],
    failure: Callable[[Failed, Submission], BaseModel],
) -> Response:
    """One JSON body once every submission finished (`answer`), or the first failure (`failure`) with
    its status; 499 when the client left first."""
    ended = await outcomes(submissions, request)
    if ended is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    last = ended[-1]
    if isinstance(last, Failed):
        body = failure(last, submissions[len(ended) - 1])
        return JSONResponse(body.model_dump(), status_code=FAILURE_STATUS[last.reason])
    finished = [outcome for outcome in ended if isinstance(outcome, Finished)]
    return JSONResponse(answer(finished).model_dump())


RenderFailure = Callable[[Exception], Iterable[ServerSentEvent]]
"""The events that tell a stream's client that rendering failed (its `error` event, say)."""


def event_stream(
    events: AsyncGenerator[ServerSentEvent, None],
    settings: Settings,
    *,
    fail: Callable[[Failed], None],
    render_failure: RenderFailure,
    close: Callable[[], None],
    headers: dict[str, str] | None = None,
) -> EventSourceResponse:
    """The `text/event-stream` response of `events`: pings, a send timeout, and on shutdown `fail`
    after `shutdown_grace_s` (the front end's events then end the stream); `close` runs when the
    response ends, also when the stream never started."""
    shutdown = anyio.Event()
    return EventSourceResponse(
        _guarded(events, shutdown, settings.shutdown_grace_s, fail, render_failure),
        headers=headers,
        ping=settings.ping_interval_s,
        ping_message_factory=lambda: ServerSentEvent(comment=PING_COMMENT),
        shutdown_event=shutdown,
        # sse-starlette cancels the stream this long after shutdown began; the watcher ends it first.
        shutdown_grace_period=settings.shutdown_grace_s + 1.0,
        send_timeout=settings.send_timeout_s,  # a client that stopped reading is dropped
        background=BackgroundTask(close),
    )


async def _guarded(
    events: AsyncGenerator[ServerSentEvent, None],
    shutdown: anyio.Event,
    grace_s: float,
    fail: Callable[[Failed], None],
    render_failure: RenderFailure,
) -> AsyncGenerator[ServerSentEvent, None]:
    """`events`, watched for shutdown, with a rendering failure logged and told to the client."""
    watcher = asyncio.get_running_loop().create_task(_fail_after_shutdown(shutdown, grace_s, fail))
    try:
        async for event in events:
            yield event
    except Exception as err:  # e.g. rendering failed: tell the client rather than cutting the stream
        log.exception("streaming failed: %s", type(err).__name__)
        for event in render_failure(err):
            yield event
    finally:
        watcher.cancel()
        await events.aclose()


async def _fail_after_shutdown(shutdown: anyio.Event, grace_s: float, fail: Callable[[Failed], None]) -> None:
    await shutdown.wait()
    await asyncio.sleep(grace_s)
    fail(Failed("shutdown", SHUTDOWN_MESSAGE))
