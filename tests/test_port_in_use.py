"""`storydiff serve` on a port that another process listens on: one line, exit 1, nothing loaded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from app.port_check import bind_error
from tests.conftest import free_port


def listening_socket() -> socket.socket:
    """A real server's socket on a free port of 127.0.0.1 (SO_REUSEADDR, as servers set it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_serve_on_a_busy_port_says_so_in_one_line_and_loads_nothing(tiny_checkpoint_dir):
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        args = ["serve", "--model", str(tiny_checkpoint_dir), "--port", str(port), "--log-level", "debug"]
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1
    assert len(lines) == 1, lines  # no uvicorn start, no model load, no "ready", no traceback
    assert lines[0].startswith("storydiff serve: error: cannot listen on 127.0.0.1:")
    assert f":{port}: address already in use" in lines[0] and "--port" in lines[0]


def test_the_check_binds_as_the_server_will():
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        assert "already in use" in (bind_error("127.0.0.1", port) or "")
        assert "already in use" in (bind_error("0.0.0.0", port) or "")  # every interface includes it
    assert bind_error("127.0.0.1", port) is None  # free again once the listener closed
    assert bind_error("127.0.0.1", free_port()) is None
    assert bind_error("127.0.0.1", 0) is None  # the system picks a port
    assert "cannot resolve host" in (bind_error("no-such-host.invalid", 8000) or "")
