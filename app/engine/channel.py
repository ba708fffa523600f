"""The bridge from the engine thread to one request's reader on the asyncio event loop.

The engine publishes from its own thread; `publish` hops onto the loop with `call_soon_threadsafe`
and returns at once, so a slow reader never slows the engine. The mailbox holds at most one step
(each new one is merged into the unread one: the latest draft, all reveals since the last read)
plus the outcome, so its memory is bounded by the sequence length however slow the reader is.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.engine.request import Failed, Outcome, StepUpdate, Update


class UpdateChannel:
    """One request's mailbox on the event loop: the coalesced latest step, then the outcome."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._step: StepUpdate | None = None
        self._outcome: Outcome | None = None
        self._outcome_read = False
        self._ready = asyncio.Event()

    def publish(self, update: Update) -> None:
        """Hand `update` to the loop; callable from any thread, never blocks."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read
            self._loop.call_soon_threadsafe(self._put, update)

    def fail(self, failure: Failed) -> None:
        """End the request from the loop side (e.g. shutdown) unless it already ended."""
        self._put(failure)

    def _put(self, update: Update) -> None:
        if self._outcome is not None:
            return  # the request already ended; later updates are stale
        if isinstance(update, StepUpdate):
            self._step = update if self._step is None else self._step.merge(update)
        else:
            self._outcome = update
        self._ready.set()

    async def next(self) -> Update | None:
        """The next update (pending step first, then the outcome); None once the outcome was read."""
        while True:
            if self._step is not None:
                step, self._step = self._step, None
                return step
            if self._outcome is not None:
                if self._outcome_read:
                    return None
                self._outcome_read = True
                return self._outcome
            self._ready.clear()
            await self._ready.wait()

    async def outcome(self) -> Outcome:
        """Wait for the end of the request, dropping intermediate steps."""
        while self._outcome is None:
            self._step = None
            self._ready.clear()
            await self._ready.wait()
        self._outcome_read = True
        return self._outcome
