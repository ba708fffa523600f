"""Per-client quotas against a real uvicorn: one client's requests (dropped streams included) cannot
take the server from another, and a client that drops many streams loses its oldest first."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from httpx_sse import aconnect_sse

from app.config import Settings
from tests.conftest import running_server, slowed_forward

pytestmark = pytest.mark.anyio

GREEDY, OTHER = "greedy-key", "other-key"
LONG = {"length": 48, "steps": 2000, "remasking": "low_confidence"}  # runs until cancelled
SHORT = {"length": 8, "steps": 4}


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir):
    settings = Settings(
        model=str(tiny_checkpoint_dir),
        device="cpu",
        port=0,
        ping_interval=0,
        api_keys=[GREEDY, OTHER],
        client_max_requests=2,
        resume_grace=60,  # longer than the test: only the quota ends a dropped stream
        timeout=120,
    )
    with slowed_forward(0.02), running_server(settings) as (url, app):
        yield url, app


def keyed(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


async def dropped_stream(client: httpx.AsyncClient) -> str:
    """Open a stream, read one event, drop the connection; its id."""
    async with aconnect_sse(client, "POST", "/generate", json={**LONG, "stream": True}) as source:
        assert source.response.status_code == 200, await source.response.aread()
        await anext(source.aiter_sse())
        return source.response.headers["x-stream-id"]


async def test_a_client_at_its_quota_is_refused_while_another_is_served(server):
    url, _ = server
    async with keyed(url, GREEDY) as greedy, keyed(url, OTHER) as other, contextlib.AsyncExitStack() as held:
        ids = []
        for _ in range(2):  # two streams the greedy client keeps reading: its quota
            source = await held.enter_async_context(
                aconnect_sse(greedy, "POST", "/generate", json={**LONG, "stream": True})
            )
            assert source.response.status_code == 200
            ids.append(source.response.headers["x-stream-id"])
        refused = await greedy.post("/generate", json=SHORT)
        served = await other.post("/generate", json=SHORT)
        metrics = (await other.get("/metrics")).text
        await asyncio.gather(*(other.delete(f"/generate/{stream_id}") for stream_id in ids))
    assert served.status_code == 200, served.text
    assert refused.status_code == 429 and "client_max_requests 2" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert 'storydiff_refused_requests_total{reason="client_quota"} 1.0' in metrics


async def test_a_client_that_drops_many_streams_loses_its_oldest_first(server):
    url, _ = server
    async with keyed(url, GREEDY) as greedy:
        oldest, older = await dropped_stream(greedy), await dropped_stream(greedy)
        newest = await dropped_stream(greedy)  # over the quota of 2: the oldest dropped one makes room
        assert (await greedy.get(f"/generate/{oldest}")).status_code == 404
        for stream_id in (older, newest):
            async with aconnect_sse(greedy, "GET", f"/generate/{stream_id}") as source:
                assert source.response.status_code == 200
                assert (await anext(source.aiter_sse())).event == "step"
        await asyncio.gather(*(greedy.delete(f"/generate/{s}") for s in (older, newest)))
