"""Integration: a real uvicorn server on a free port, talked to over TCP with httpx and httpx-sse."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch
from httpx_sse import aconnect_sse

from app.config import Settings
from tests.conftest import running_server, slowed_forward

pytestmark = pytest.mark.anyio

FORWARD_DELAY_S = 0.015  # slows the tiny model so that requests overlap and live long enough to watch


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir):
    """uvicorn in a thread, serving the tiny checkpoint slowed down; yields the base URL and the app."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = Settings(
        model=str(tiny_checkpoint_dir),
        device="cpu",
        port=0,
        max_batch=16,
        ping_interval=0.1,
        resume_grace=0,  # a client that leaves cancels at once; tests/test_resume.py has the grace
        client_max_requests=None,  # every stream here comes from one address; tests/test_quotas.py has quotas
        log_level="warning",
    )
    with slowed_forward(FORWARD_DELAY_S), running_server(settings) as (url, app):
        yield url, app
    torch.set_num_threads(torch_threads)


@pytest.fixture
async def client(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def engine_of(server):
    return server[1].state.runtime.loaded.engine


async def stream_events(client: httpx.AsyncClient, request: dict) -> list:
    """The stream's events. httpx-sse turns each `: ping` comment into an empty "message" event
    (the SSE spec dispatches nothing for a block without data), so those are dropped here."""
    async with aconnect_sse(client, "POST", "/generate", json=request) as source:
        source.response.raise_for_status()
        return [event async for event in source.aiter_sse() if event.data]


async def wait_until_idle(engine, failure: str, within_s: float = 2.0) -> None:
    """Wait until the engine's batch is empty; fail with `failure` after `within_s`."""
    deadline = time.monotonic() + within_s
    while engine.stats.snapshot().active:
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.01)


async def test_json_generation_over_tcp(client):
    response = await client.post("/generate", json={"length": 24, "steps": 4, "seed": 9})
    assert response.status_code == 200
    body = response.json()
    assert body["seed"] == 9 and body["length"] == 24 and len(body["tokens"]) == 24


async def test_metrics_over_tcp_follow_the_engine(client, server):
    scraped = await client.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    completed = engine_of(server).stats.snapshot().completed
    assert f'storydiff_requests_total{{outcome="completed"}} {float(completed)}' in scraped.text
    assert 'storydiff_model_state{state="ready"} 1.0' in scraped.text


async def test_stream_of_steps_ends_with_done(client):
    events = await stream_events(client, {"stream": True, "length": 32, "steps": 12, "seed": 4})
    assert [e.event for e in events[:-1]] == ["step"] * (len(events) - 1) and events[-1].event == "done"
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids))  # every event has an id, strictly increasing
    steps = [json.loads(e.data) for e in events[:-1]]
    assert [s["step"] for s in steps] == sorted(s["step"] for s in steps) and steps[-1]["step"] == 12
    assert [s["masked"] for s in steps] == sorted((s["masked"] for s in steps), reverse=True)
    assert sum(len(s["changed"]) for s in steps) == 32  # coalesced or not, no reveal is lost
    done = json.loads(events[-1].data)
    assert steps[-1]["masked"] == 0 and done["text"] == steps[-1]["text"]
    assert done["steps"] == 12 and done["seed"] == 4


async def test_stream_every(client):
    events = await stream_events(client, {"stream": True, "length": 24, "steps": 10, "stream_every": 4})
    steps = [json.loads(e.data)["step"] for e in events if e.event == "step"]
    assert set(steps) <= {4, 8, 10} and steps[-1] == 10


async def test_keep_alive_pings_are_sse_comments(client):
    request = {"stream": True, "length": 32, "steps": 32, "remasking": "low_confidence"}
    async with client.stream("POST", "/generate", json=request) as response:
        lines = [line async for line in response.aiter_lines()]
    assert any(line.startswith(": ping") for line in lines)
    assert "event: done" in lines


async def test_ten_concurrent_streams_complete_and_share_forward_passes(client, server):
    before = (await client.get("/info")).json()["engine"]
    requests = [
        {"stream": True, "length": 20 + 4 * i, "steps": 16, "remasking": "low_confidence", "seed": i} for i in range(10)
    ]
    results = await asyncio.gather(*(stream_events(client, request) for request in requests))
    assert all(events[-1].event == "done" for events in results)
    after = (await client.get("/info")).json()["engine"]
    assert after["completed"] - before["completed"] == 10
    shared = {int(size): n - before["batch_sizes"].get(size, 0) for size, n in after["batch_sizes"].items()}
    assert max(size for size, n in shared.items() if n > 0) > 1  # the engine batched them together


async def test_disconnect_mid_stream_frees_the_slot(client, server):
    engine = engine_of(server)
    before = engine.stats.snapshot()
    request = {"stream": True, "length": 64, "steps": 64, "remasking": "low_confidence"}
    async with aconnect_sse(client, "POST", "/generate", json=request) as source:
        received = 0
        async for event in source.aiter_sse():
            received += event.event == "step"
            if received == 2:
                assert engine.stats.snapshot().active == 1
                break  # leaving the block closes the connection mid-stream
    await wait_until_idle(engine, "the disconnected request stayed in the batch")
    after = engine.stats.snapshot()
    assert after.cancelled == before.cancelled + 1 and after.completed == before.completed
    assert (await client.get("/ready")).status_code == 200


async def test_client_input_never_yields_a_500(client):
    bodies = [  # no body at all is {} (tests/test_first_requests.py)
        b"{",
        b'{"length": 1e309}',
        b'{"steps": NaN}',
        b'{"top_k": 99999999999999999999999}',
        b'{"prompt": "' + b"x" * 30_000 + b'"}',
        b'"just a string"',
    ]
    for content in bodies:
        response = await client.post("/generate", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422, (content[:40], response.status_code)


async def test_json_client_that_gives_up_is_dropped_from_the_batch(client, server):
    engine = engine_of(server)
    before = engine.stats.snapshot()
    request = {"length": 64, "steps": 64, "remasking": "low_confidence"}
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/generate", json=request, timeout=0.3)  # the client hangs up
    await wait_until_idle(engine, "the abandoned request stayed in the batch")
    after = engine.stats.snapshot()
    assert after.cancelled == before.cancelled + 1 and after.completed == before.completed
