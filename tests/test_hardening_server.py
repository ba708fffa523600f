"""A real server under `storydiff serve`'s uvicorn settings, attacked over TCP: idle and slow-header
connections, oversized and stalled bodies, too many connections, and an engine that dies."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

import app.diffusion.cpu_forward as cpu_forward
from app.config import Settings
from app.serve_cli import serve
from tests.conftest import free_port, running_server
from tests.support.service import settings_for

HEADER_TIMEOUT_S = 1.0
CLOSED_WITHIN_S = 10.0  # generous: a shared CI machine; the property is that it closes at all


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[tuple[str, int]]:
    """The service under `storydiff serve`'s uvicorn config, in a thread; yields its URL and port."""
    with running_server(settings) as (url, _):
        yield url, int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def hardened(tiny_checkpoint_dir):
    settings = settings_for(
        tiny_checkpoint_dir,
        port=0,
        header_timeout=HEADER_TIMEOUT_S,
        body_timeout=1.0,
        max_body_size=4096,
        max_connections=8,
    )
    with running(settings) as server:
        yield server


def closed_by_server(sock: socket.socket, within_s: float = CLOSED_WITHIN_S) -> bytes:
    """Read until the server closes the connection; what it sent first. Fails if it stays open."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within_s} s")
    except ConnectionResetError:
        pass  # closed with unread data in its buffer: a reset, as good as a close
    return received


def test_an_idle_connection_is_closed(hardened):
    _, port = hardened
    with socket.create_connection(("127.0.0.1", port)) as idle:
        assert closed_by_server(idle) == b""  # uvicorn alone kept it open for ever


def test_a_slow_header_connection_is_closed_while_others_are_served(hardened):
    url, port = hardened
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while time.monotonic() < deadline:
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # everyone else is served
            try:
                slow.sendall(b"X-a: b\r\n")  # a header line now and then: a byte resets uvicorn's own timer
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(0.2)
        assert closed_by_server(slow, 0.5) == b""


def test_a_finished_request_does_not_open_a_slow_header_window(hardened):
    _, port = hardened
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"G")  # one byte stops uvicorn's keep-alive timer; the header deadline still runs
        closed_by_server(sock)


def test_headers_over_the_limit_are_refused(hardened):
    _, port = hardened
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000)  # no end of headers yet
        assert closed_by_server(sock).startswith(b"HTTP/1.1 400")


def test_a_body_over_the_limit_is_413_before_it_is_sent(hardened):
    _, port = hardened
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 10000000\r\n\r\n{")  # 10 MB announced, one byte sent
        answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [False, True])
async def test_an_async_client_sending_a_large_body_reads_the_413(hardened, chunked, anyio_backend):
    """httpx's async client writes the whole body before it reads: a server that answers and closes
    mid-body gives it a connection reset instead of the 413 (issue 29)."""
    url, _ = hardened
    body = b'{"prompt": "' + b"x" * 300_000 + b'"}'

    async def pieces():
        for start in range(0, len(body), 16384):
            yield body[start : start + 16384]

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.post("/generate", content=pieces() if chunked else body)
    assert answer.status_code == 413 and "larger than 4096 bytes" in answer.json()["detail"]


def test_a_stalled_body_is_408(hardened):
    _, port = hardened
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b'Content-Length: 100\r\n\r\n{"length": ')
        assert closed_by_server(sock).startswith(b"HTTP/1.1 408")


def test_connections_beyond_the_limit_get_503_until_idle_ones_are_closed(hardened):
    url, port = hardened
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        deadline = time.monotonic() + HEADER_TIMEOUT_S / 2  # before the header deadline frees them
        while httpx.get(f"{url}/health", timeout=5).status_code != 503:  # once the server accepted them all
            assert time.monotonic() < deadline, "a request beyond max_connections was served"
            time.sleep(0.02)
        for sock in idle:
            closed_by_server(sock)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


class EngineKiller(BaseException):
    """Not an Exception: the engine's step retry lets it through, and its thread dies."""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_dead_engine_fails_ready_and_the_process_exits_1(tiny_checkpoint_dir, monkeypatch, anyio_backend):
    armed = threading.Event()
    original = cpu_forward.logits_at

    def dying_logits_at(model, x, query, attention_mask=None):
        if armed.is_set():
            raise EngineKiller("the device fell off the bus")
        return original(model, x, query, attention_mask)

    monkeypatch.setattr(cpu_forward, "logits_at", dying_logits_at)
    port = free_port()
    settings = settings_for(tiny_checkpoint_dir, port=port, exit_on_engine_failure_after=1.0)
    server = asyncio.ensure_future(serve(settings))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            assert not server.done() and time.monotonic() < deadline, "the server never became ready"
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/ready")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
        armed.set()
        story = await client.post("/generate", json={"length": 8, "steps": 2, "remasking": "low_confidence"})
        assert story.status_code == 500 and story.json()["error"] == "internal"
        said_why_by = time.monotonic() + 10
        while (ready := await client.get("/ready")).json()["detail"] is None:  # the 500 can come a moment first
            assert time.monotonic() < said_why_by, "/ready never said why"
            await asyncio.sleep(0.01)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "EngineKiller: the device fell off the bus" in ready.json()["detail"]
        metrics = (await client.get("/metrics")).text
        assert "storydiff_engine_failures_total 1.0" in metrics
        assert 'storydiff_model_state{state="failed"} 1.0' in metrics
        assert (await client.post("/generate", json={"length": 8, "steps": 2})).status_code == 503
    assert await asyncio.wait_for(server, 30) == 1  # for Docker or Kubernetes to restart it
