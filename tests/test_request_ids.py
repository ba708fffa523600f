"""Request ids and logs: `storydiff serve --log-format json` as a real process, its log lines parsed;
the id a client sends (or one made for it) in the response header, the JSON answer, the `done` event
and the log lines about the request; no prompt in the logs; the ready line with the bound port."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from httpx_sse import connect_sse

from app.api.request_ids import request_id_from
from app.config import Settings
from app.logging_setup import REQUEST_ID, TextFormatter
from app.serve_cli import announce_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
NEW_ID = re.compile(r"[0-9a-f]{32}")
SECRET = "Zanzibarian marmalade whispers"  # a prompt; it must not reach the logs


def test_a_sane_client_id_is_kept_and_anything_else_replaced():
    assert request_id_from("checkout-42_a.b:c") == "checkout-42_a.b:c"
    for insane in (None, "", "x" * 129, "two words", "forged\nline", "naïve"):
        assert NEW_ID.fullmatch(request_id_from(insane)), insane


def test_text_lines_name_the_request_they_are_about():
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "done", None, None)
    token = REQUEST_ID.set("abc-1")
    try:
        record.request_id = REQUEST_ID.get()
        assert TextFormatter("%(name)s%(request_tag)s: %(message)s").format(record) == "app.x [abc-1]: done"
    finally:
        REQUEST_ID.reset(token)


def test_the_ready_line_has_the_bound_port(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = SimpleNamespace(servers=[SimpleNamespace(sockets=[sock])])
        announce_ready(server, Settings(port=0))  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}/"
    assert capsys.readouterr().out == f"storydiff ready: {url} (API docs: {url}docs)\n"


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]  # every line is one JSON object


def _ready_url(process: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server never said it was ready"
        ready = [record for record in _records(log) if record.get("event") == "ready"]
        if ready:
            return ready[0]["url"].rstrip("/")
        time.sleep(0.1)


@pytest.mark.slow
def test_json_logs_and_answers_carry_the_request_id_and_no_prompt(tiny_checkpoint_dir, tmp_path):
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "app", "--model", str(tiny_checkpoint_dir), "--port", "0", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as stderr:
        process = subprocess.Popen([*command, "--log-format", "json"], cwd=REPO_ROOT, env=env, stderr=stderr)
    try:
        url = _ready_url(process, log)
        assert not url.endswith(":0"), "the bound port, not the one asked for"
        body = {"prompt": SECRET, "length": 24, "steps": 4, "seed": 1}
        answer = httpx.post(f"{url}/generate", json=body, headers={"X-Request-ID": "client-7"}, timeout=30)
        assert answer.headers["X-Request-ID"] == answer.json()["request_id"] == "client-7"

        with (
            httpx.Client(timeout=30) as client,
            connect_sse(
                client, "POST", f"{url}/generate", json=body | {"stream": True}, headers={"X-Request-ID": "no good"}
            ) as source,
        ):
            streamed_id = source.response.headers["X-Request-ID"]
            done = [json.loads(event.data) for event in source.iter_sse() if event.event == "done"]
        assert NEW_ID.fullmatch(streamed_id) and done[0]["request_id"] == streamed_id

        httpx.get(f"{url}/", params={"prompt": SECRET}, headers={"X-Request-ID": "page-1"})
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert SECRET.split()[0] not in log.read_text()
    records = _records(log)
    assert all({"time", "level", "logger", "request_id", "message"} <= set(record) for record in records)
    by_id: dict[str, list[dict]] = {}
    for record in records:
        by_id.setdefault(record["request_id"], []).append(record)
    for request_id in ("client-7", streamed_id):
        (generation,) = [record for record in by_id[request_id] if record.get("event") == "generation"]
        assert generation["outcome"] == "completed" and generation["steps"] == 4 and generation["duration_s"] > 0
        (access,) = [record for record in by_id[request_id] if record["logger"] == "uvicorn.access"]
        assert access["path"] == "/generate" and access["status_code"] == 200
    (page,) = by_id["page-1"]
    assert page["path"] == "/" and '"GET / HTTP/1.1" 200' in page["message"]  # the query string is left out
