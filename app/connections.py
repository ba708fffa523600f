"""Connections that must send each request's headers in time: uvicorn's h11 protocol with a deadline.

uvicorn times a connection out only between requests (its keep-alive timer starts when a response
ends, and every byte received stops it), so a client that connects and sends nothing, or one header
byte every few seconds (slowloris), holds a connection for ever (Kludex/uvicorn#1192), and enough
of them fill `limit_concurrency` for everyone. This protocol closes a connection that has not
completed a request's headers `header_timeout_s` after it opened or after its previous response
ended. A body has its own deadline (`app.api.limits.BodyLimit`); a response, streamed for minutes,
has none.

h11 rather than httptools: h11 bounds the request line and headers (`h11_max_incomplete_event_size`,
400 beyond it), while httptools accepted 2 MB of headers.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections that are too slow to send a request's headers."""

    header_timeout_s: ClassVar[float] = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one is buffered
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """The h11 protocol class for uvicorn.Config(http=...), closing header-slow connections after `timeout_s`."""
    return type("HeaderDeadlineH11", (HeaderDeadlineH11,), {"header_timeout_s": timeout_s})
