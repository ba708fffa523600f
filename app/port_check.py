"""Can `storydiff serve` listen on its address? Asked before anything loads, so a busy port costs one
line rather than a model load and a traceback.

uvicorn binds only after the app's startup (our model load) has begun, and a failed bind ends in
`sys.exit` inside a task. This check binds the way uvicorn's `loop.create_server` will (every address
the host resolves to, SO_REUSEADDR on POSIX, IPv6 sockets IPv6-only, addresses of a disabled family
skipped) and lets go at once; the server binds a moment later.
"""

from __future__ import annotations

import errno
import os
import socket

REUSE_ADDRESS = os.name == "posix"  # asyncio's default: a port in TIME_WAIT is free, one with a listener is not


def bind_error(host: str, port: int) -> str | None:
    """None when every address of `host` can listen on `port` now; otherwise why not, in words."""
    if port == 0:
        return None  # the system picks a free port
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"cannot resolve host {host!r}: {err.strerror}"
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)  # all held until the end: two addresses of one host may collide
            if REUSE_ADDRESS:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL and len(addresses) > 1:
                    continue  # a family this machine has not enabled, as asyncio skips it
                reason = err.strerror or str(err)
                if err.errno == errno.EADDRINUSE:
                    reason = "address already in use (is another server running there?)"
                return f"cannot listen on {_where(address)}: {reason}"
    finally:
        for sock in sockets:
            sock.close()
    return None


def _where(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port of `host` that nothing listens on now, for a server that a test or a benchmark starts."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
