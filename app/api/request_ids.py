"""Request ids: every HTTP request gets one, from a sane `X-Request-ID` header or new, and gets it back.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which runs the app in another task) sets
the id in `app.logging_setup.REQUEST_ID` for the whole request, so that every log line written while
serving it, streams and uvicorn's access line included, carries it, and adds the `X-Request-ID`
response header.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging_setup import REQUEST_ID

HEADER = "X-Request-ID"
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""What a client's id may be: bounded, and nothing that could forge a log line or a header."""


def request_id_from(header: str | None) -> str:
    """The client's id if it is sane, else a new one (32 hex digits)."""
    if header is not None and SANE_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets each HTTP request's id for its duration and returns it in the `X-Request-ID` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_from(_latin1(headers.get(HEADER.lower().encode())))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
