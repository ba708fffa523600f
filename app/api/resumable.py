"""Streams that outlive their connection, so a client whose network drops can resume its story.

Every `/generate` stream gets an id from `secrets.token_urlsafe` (128 bits), sent in the
`X-Stream-ID` header. The id is a capability: whoever holds it can watch the story
(`GET /generate/{id}`) or cancel it (`DELETE /generate/{id}`), behind the same API key as
`/generate` where the server has keys. storydiff's own log names the engine's request number
instead; access logs see the id in resume URLs, where it is worthless once the stream expires.

- Grace: when a stream's connection drops, its request keeps running for `resume_grace` seconds; if
  nobody resumes it by then it is cancelled and leaves the batch, as an abandoned stream did at once
  before. A finished stream keeps its outcome `resume_grace` seconds after the end. With
  `resume_grace = 0` a client that leaves cancels its request at once and nothing can be resumed.
- Composition: the engine publishes into the stream's `UpdateChannel` (app/engine/channel.py), the one
  mailbox between the engine thread and the loop; a task reads it into the stream's history, which
  every connection reads. Memory: that history is the latest draft and every change so far, never
  past events: O(length) (a reveal is made once per position), more with revision sampling, where
  each word returned to the mask and written again adds two. A reader is a cursor into the changes,
  and each event carries each position's latest change since the reader's previous one (`net_changes`).
- Event ids count a stream's events, 1, 2, 3, ..., across its connections (numbers, as before; the
  brief's `<stream-id>:<n>` would repeat the secret in every event, and clients read them as numbers).
- Resuming: the first event of a resumed connection brings the client up to date in one `step`
  event. The stream remembers where each event it sent left its reader (step, reveals: two ints an
  event), so when `Last-Event-ID` names any event of the stream the client gets exactly the reveals
  after it, even when later events were sent but never arrived; without a known `Last-Event-ID` it
  gets a full frame, every reveal so far, marked `full: true`. Then live steps, then `done` or
  `error`; a stream that already ended answers its last frame and its outcome at once.
- One connection per stream: a resume takes over and ends the previous connection, which is
  usually dead without the server knowing (a dropped network sends no FIN); a live one gets an
  `error` event `taken_over` first, and a cancelled stream's an `error` event `cancelled` (no `id`:
  they are not part of the stream), so an EventSource client knows not to reconnect.
- SSE spec: the first event of each connection carries `retry` (how long an `EventSource` waits
  before reconnecting), and the resume route is a GET, so an `EventSource` can use it directly.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from app.api.jobs import Job
from app.api.request_log import log_generation
from app.api.submission import submit
from app.engine import Change, Engine, Failed, Outcome, RequestHandle, StepUpdate, Update, UpdateChannel, net_changes
from app.engine.request import Publish

log = logging.getLogger(__name__)

STREAM_ID_BYTES = 16
STREAM_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
"""What `secrets.token_urlsafe(STREAM_ID_BYTES)` writes (22 characters), with room to grow."""


class StreamNotFound(LookupError):
    """No stream has this id: it never existed, expired, or was cancelled."""

    def __init__(self, grace_s: float) -> None:
        super().__init__(
            f"no such stream: it was cancelled, never existed, or ended or lost its client more than "
            f"{grace_s:g} s ago (resume_grace)"
        )


class StreamReader:
    """One connection's view of a stream: a cursor into its reveals, and whether it sent the outcome."""

    def __init__(self, stream: ResumableStream, step: int, revealed: int, full: bool = False) -> None:
        self.stream = stream
        self._step, self._revealed = step, revealed
        self._ended = False
        self.delivered = 0  # events handed out so far
        self.full = full  # its next step event is a full frame, marked so (serving.step_events)

    async def next(self) -> tuple[int | None, Update] | None:
        """The next event's id and update: every reveal since this reader's previous event, then the
        outcome; an id-less `cancelled` or `taken_over` failure when the stream was cancelled or another
        connection took it over; None when done."""
        stream = self.stream
        while not self._ended and stream.reader is self and not stream.cancelled:
            latest = stream.latest
            if latest is not None and latest.step > self._step:
                changed, remasked = net_changes(stream.changes[self._revealed :])
                self._step, self._revealed = latest.step, len(stream.changes)
                update = StepUpdate(latest.step, latest.num_steps, latest.t, latest.ids, changed, remasked)
                self.delivered += 1
                return stream.sent(self._step, self._revealed), update
            if stream.outcome is not None:
                self._ended, self.delivered = True, self.delivered + 1
                return stream.sent(self._step, self._revealed), stream.outcome
            await stream.changed()
        if self._ended:
            return None
        self._ended = True  # a connection that ends early says why
        if stream.cancelled:
            return None, Failed("cancelled", "the stream was cancelled (DELETE /generate/{id})")
        return None, Failed("taken_over", "another connection resumed this stream; this one ends")

    def close(self) -> None:
        """The connection ended; idempotent. The stream waits `resume_grace` for another."""
        self.stream.detach(self)


class ResumableStream:
    """One request's story for its readers: the latest draft, every reveal so far, then the outcome."""

    def __init__(self, job: Job, submit: Callable[[Publish], RequestHandle], registry: StreamRegistry) -> None:
        self.id = secrets.token_urlsafe(STREAM_ID_BYTES)
        self.job = job
        self.latest: StepUpdate | None = None  # its step, t and ids; its changes are in `changes`
        self.changes: list[Change] = []  # every reveal and remask so far, in order
        self.outcome: Outcome | None = None
        self.cancelled = False
        self.reader: StreamReader | None = None
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self._tick = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self._last_sent = (0, 0, 0)  # (event id, step, reveals) of the latest event any reader sent
        self._positions: dict[int, tuple[int, int]] = {}  # event id -> (step, reveals) it brought its reader to
        self.detached_at: float | None = self._loop.time()  # since when no connection reads it (None: read)
        self._channel = UpdateChannel(self._loop)
        self.handle = submit(self._channel.publish)  # QueueFull: raised before anything reads
        self._recorder = self._loop.create_task(self._record(), name=f"storydiff-stream-{self.handle.id}")

    async def _record(self) -> None:
        """Read the engine's updates off the channel into the history every connection reads."""
        while (update := await self._channel.next()) is not None:
            self._put(update)

    def _put(self, update: Update) -> None:
        if isinstance(update, StepUpdate):
            self.changes += update.changes
            self.latest = update
        else:
            self.outcome = update
            log_generation(self.handle, update, request_id=self.job.request_id)
            self._arm()  # its outcome is kept `resume_grace`, whoever is reading
        self._notify()

    def fail(self, failure: Failed) -> None:
        """End the request from the loop side (e.g. shutdown) unless it already ended."""
        self._channel.fail(failure)
        self.handle.cancel()

    def cancel(self) -> None:
        """Cancel the request now (its batch slot is free before the next step) and forget the stream."""
        if self.outcome is None and not self.cancelled:
            log_generation(self.handle, "cancelled", request_id=self.job.request_id)
        self.cancelled = True
        self.handle.cancel()
        self._forget()
        self._notify()

    def attach(self, last_event_id: int | None) -> StreamReader:
        """A reader for a new connection, which takes the stream over from any previous one."""
        known = self._positions.get(last_event_id) if last_event_id is not None else None
        if self.reader is not None:
            log.info("request %d: a new connection takes its stream over", self.handle.id)
        # Exactly what the client missed after the event it names; a full frame, marked, otherwise.
        self.reader = StreamReader(self, *known) if known else StreamReader(self, 0, 0, full=self._last_sent[0] > 0)
        self.detached_at = None
        if self.outcome is None and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._notify()  # the previous reader sees it was taken over and ends its connection
        return self.reader

    def detach(self, reader: StreamReader) -> None:
        """`reader`'s connection ended: if it was the stream's, wait `resume_grace` for another."""
        if reader is self.reader:
            self.reader = None
            self.detached_at = self._loop.time()
            if self.outcome is None and not self.cancelled:
                self._arm()

    def sent(self, step: int, revealed: int) -> int:
        """The id of the next event, which brings its reader to `step` and `revealed` reveals."""
        event_id = self._last_sent[0] + 1
        self._last_sent = (event_id, step, revealed)
        self._positions[event_id] = (step, revealed)
        return event_id

    async def changed(self) -> None:
        """Wait until the stream changes: a step, the outcome, a cancel or a new reader."""
        await self._tick.wait()

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def _arm(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        grace_s = self._registry.grace_s
        if grace_s > 0:
            self._expiry = self._loop.call_later(grace_s, self._expire)
        else:
            self._expire()

    def _expire(self) -> None:
        self._expiry = None
        if self.outcome is None and self.reader is not None:
            return  # a client came back
        if self.outcome is None:
            log.info("request %d: nobody resumed its stream; cancelling it", self.handle.id)
            log_generation(self.handle, "cancelled", request_id=self.job.request_id)
        self.handle.cancel()  # no-op once finished: frees the slot of an abandoned stream
        self._forget()

    def _forget(self) -> None:
        self._recorder.cancel()  # no-op once the outcome was read; a cancelled request publishes nothing
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._registry.forget(self)


class StreamRegistry:
    """The live and recently ended streams by id; lives as long as the engine that runs them."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._streams: dict[str, ResumableStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, job: Job, engine: Engine, timeout_s: float) -> StreamReader:
        """Submit `job` (QueueFull: nothing is kept) as a new stream; returns its first reader."""
        stream = ResumableStream(job, lambda publish: submit(job, engine, timeout_s, publish), self)
        self._streams[stream.id] = stream
        return stream.attach(None)

    def get(self, stream_id: str) -> ResumableStream:
        """The stream with this id; raises StreamNotFound (404)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamNotFound(self.grace_s)
        return stream

    def detached(self, client: str) -> list[ResumableStream]:
        """`client`'s running streams that no connection reads (awaiting resume), oldest detached first."""
        streams = [
            stream
            for stream in self._streams.values()
            if stream.job.client == client
            and stream.detached_at is not None
            and stream.outcome is None
            and not stream.cancelled
        ]
        return sorted(streams, key=lambda stream: stream.detached_at or 0.0)

    def fail_running(self, message: str) -> int:
        """End every stream still running with a `shutdown` failure that carries its draft; how many."""
        running = [stream for stream in self._streams.values() if stream.outcome is None and not stream.cancelled]
        for stream in running:
            draft = None if stream.latest is None else stream.latest.ids
            stream.fail(Failed("shutdown", message, draft=draft))
        return len(running)

    def forget(self, stream: ResumableStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
