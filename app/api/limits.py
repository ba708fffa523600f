"""Request bodies bounded in size and in time before the app sees them: an ASGI middleware.

The middleware reads the body itself, counting bytes as they arrive (a chunked request declares no
length), and hands it to the app whole. A body known to be too large gets 413 at once: from its
Content-Length before a byte of it is read, else as soon as the count passes the limit. A body
that takes longer than `timeout_s` to arrive gets 408. Both answers close the connection, since
the rest of the body is never read.

A client that writes its whole body before it reads (httpx's async client) sees a connection reset,
not the 413, when the server answers and closes mid-body; so a body over the limit but under
`DRAIN_BYTES` is read to its end (and thrown away, within `timeout_s`) before the 413 goes out. A
larger one is answered at once: reading it would cost more than the answer is worth.
"""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.refusals import Refusals

DRAIN_BYTES = 1 << 20
"""The most of a too-large body read and discarded so that its client reads the 413 (1 MiB)."""


class BodyTooLarge(Exception):
    """The body passed the limit while it streamed in."""


class BodyLimit:
    """Answer 413 to a body over `max_bytes` and 408 to one slower than `timeout_s`; pass the rest on."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, refusals: Refusals | None = None) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.refusals = refusals or Refusals()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DRAIN_BYTES:
                await self._drain(receive, 0)
            await self._refuse(send, 413, f"the request body ({declared} bytes) is larger than {self.max_bytes} bytes")
            return
        try:
            with anyio.fail_after(self.timeout_s):
                body = await self._read(receive)
        except BodyTooLarge as err:
            await self._drain(receive, err.args[0])
            await self._refuse(send, 413, f"the request body is larger than {self.max_bytes} bytes")
            return
        except TimeoutError:
            await self._refuse(send, 408, f"the request body took longer than {self.timeout_s:g} s to arrive")
            return
        if body is None:
            return  # the client left while sending: nobody to answer
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None if the client disconnected first."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge(size if message.get("more_body", False) else DRAIN_BYTES)  # bytes read
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _drain(self, receive: Receive, size: int) -> None:
        """Read and discard the body's rest, up to `DRAIN_BYTES` in all and for at most `timeout_s`."""
        with anyio.move_on_after(self.timeout_s):
            while size < DRAIN_BYTES:
                message = await receive()
                size += len(message.get("body", b""))
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return

    async def _refuse(self, send: Send, status: int, detail: str) -> None:
        self.refusals.count("body_too_large" if status == 413 else "body_timeout")
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the unread rest of the body must not be taken for a next request
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # servers refuse a malformed length themselves; counting still bounds it
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body read already, then whatever the client sends next
    (its disconnect, which streaming responses wait for)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
