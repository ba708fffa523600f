"""Admission against a real `storydiff serve`: the issue's case of many requests at the cost cap,
scaled to a small timeout, and one client's share of the server.

The server's forwards and engine iterations are slowed (tests/support/slow_serve.py) so that, as on
a slow CPU, a step that skips the model still costs time: the case where every admitted request
used to time out at 98% of its steps.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import free_port
from tests.support.server_process import start_server, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

FORWARD_DELAY_S = 0.01
STEP_DELAY_S = 0.002  # a row, every engine iteration, forward or not
TIMEOUT_S = 15
AT_THE_CAP = {"length": 48, "steps": 1024, "remasking": "random"}  # 48 forwards, 976 steps that skip the model
CAP = 48 * 1024


@pytest.fixture
def slow_server(tiny_checkpoint_dir, monkeypatch):
    """A real server whose iterations cost STEP_DELAY_S and forwards FORWARD_DELAY_S more."""
    monkeypatch.setenv("STEP_DELAY_S", str(STEP_DELAY_S))
    port = free_port()
    flags = ["--timeout", str(TIMEOUT_S), "--max-request-cost", str(CAP), "--resume-grace", "0"]
    flags += ["--client-max-requests", "none", "--client-max-cost", "none"]  # one client sends everything
    process = start_server(tiny_checkpoint_dir, port, *flags, forward_delay_s=FORWARD_DELAY_S)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        yield url
    finally:
        process.terminate()
        process.wait(30)


async def test_no_admitted_request_at_the_cap_times_out(slow_server):
    # 32 at once, as in the issue: one alone takes ~4 s; all together ~70 s, past the 15 s timeout
    async with httpx.AsyncClient(base_url=slow_server, timeout=60) as client:
        answers = await asyncio.gather(*(client.post("/generate", json=AT_THE_CAP) for _ in range(32)))
        metrics = (await client.get("/metrics")).text
    statuses = [answer.status_code for answer in answers]
    assert 504 not in statuses, f"an admitted request timed out: {statuses}"
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    assert set(statuses) == {200, 429}, statuses
    refused = [answer for answer in answers if answer.status_code == 429]
    assert max(int(answer.headers["retry-after"]) for answer in refused) > 1, "Retry-After from the work ahead"
    assert 'storydiff_requests_total{outcome="timed_out"} 0.0' in metrics
    assert f'storydiff_refused_requests_total{{reason="over_timeout"}} {float(len(refused))}' in metrics
