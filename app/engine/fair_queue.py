"""The engine's waiting requests, admitted round-robin across clients rather than first come first served.

A client that queues many requests waits its turn like the others: each free batch slot goes to
the next client in turn (its oldest request), and a client that just had one goes to the back. A
request's client is the `client` of its `RequestHandle` (the API key or address, app/api/clients.py);
requests without one share the client "".
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator

from app.engine.request import RequestHandle


class FairQueue:
    """Per-client FIFO queues, served in turn. Not thread-safe: the engine guards it with its lock."""

    def __init__(self) -> None:
        self._clients: OrderedDict[str, deque[RequestHandle]] = OrderedDict()  # in turn order
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[RequestHandle]:
        """The waiting requests in the order `popleft` would admit them."""
        return iter(self.order())

    def append(self, handle: RequestHandle) -> None:
        """Queue `handle` behind its client's earlier requests; a new client joins the end of the turn."""
        self._clients.setdefault(handle.client, deque()).append(handle)
        self._size += 1

    def popleft(self) -> RequestHandle:
        """The oldest request of the client whose turn it is; that client goes to the back of the turn."""
        client, queue = next(iter(self._clients.items()))  # the engine pops only a non-empty queue
        handle = queue.popleft()
        if queue:
            self._clients.move_to_end(client)
        else:
            del self._clients[client]
        self._size -= 1
        return handle

    def remove(self, handle: RequestHandle) -> None:
        """Drop `handle` (cancelled or expired) wherever it waits."""
        queue = self._clients[handle.client]
        queue.remove(handle)
        if not queue:
            del self._clients[handle.client]
        self._size -= 1

    def order(self, extra: RequestHandle | None = None) -> list[RequestHandle]:
        """The waiting requests (and `extra`, as if appended) in the order they would be admitted."""
        queues = OrderedDict((client, list(queue)) for client, queue in self._clients.items())
        if extra is not None:
            queues.setdefault(extra.client, []).append(extra)
        order: list[RequestHandle] = []
        while queues:
            for client in list(queues):
                order.append(queues[client].pop(0))
                if not queues[client]:
                    del queues[client]
        return order
