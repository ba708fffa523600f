"""Resumable streams: the registry on its own (fake engine), then a real uvicorn whose clients drop."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from asgi_lifespan import LifespanManager
from httpx_sse import aconnect_sse

from app.api import create_app
from app.api.jobs import Job
from app.api.resumable import STREAM_ID_PATTERN, StreamNotFound, StreamRegistry
from app.config import Settings
from app.diffusion.sampler_settings import SamplerSettings
from app.engine import Finished, GenerationSpec, RequestHandle, Reveal, StepUpdate
from tests.conftest import running_server, slowed_forward

pytestmark = pytest.mark.anyio

FORWARD_DELAY_S = 0.015  # slows the tiny model so that a stream lives long enough to drop and resume
GRACE_S = 30.0  # far longer than any test waits: what frees a slot sooner is a cancel, never the grace
LENGTH = 8


# --- the registry, driven by hand -------------------------------------------------------------


class FakeEngine:
    """What the registry needs of an engine: `submit`, keeping the handles to publish through."""

    def __init__(self) -> None:
        self.handles: list[RequestHandle] = []

    def submit(self, spec, publish, timeout_s, request_id=None, client="") -> RequestHandle:
        self.handles.append(RequestHandle(spec, publish, deadline=time.monotonic() + timeout_s, client=client))
        return self.handles[-1]


def job() -> Job:
    spec = GenerationSpec((), LENGTH, SamplerSettings(steps=LENGTH), seed=0, stream_every=1)
    return Job(spec, "fake")


def step(k: int) -> StepUpdate:
    """Step k of LENGTH reveals position k - 1."""
    ids = tuple(100 + pos if pos < k else 0 for pos in range(LENGTH))
    return StepUpdate(k, LENGTH, 1 - k / LENGTH, ids, (Reveal(k - 1, 100 + k - 1, 0.5),))


async def published(handle: RequestHandle, *updates) -> None:
    """Publish as the engine thread does, and let the loop take the updates in: the channel's callback,
    then the stream's recorder task."""
    for update in updates:
        handle.publish(update)
        for _ in range(3):
            await asyncio.sleep(0)


async def test_a_slow_reader_gets_every_reveal_in_one_event_then_the_outcome():
    engine, registry = FakeEngine(), StreamRegistry(GRACE_S)
    reader = registry.open(job(), engine, 60)
    handle = engine.handles[0]
    await published(handle, step(1), step(2), step(3))
    event_id, update = await reader.next()
    assert event_id == 1 and update.step == 3 and [r.pos for r in update.changed] == [0, 1, 2]
    await published(handle, step(4), Finished(step(4).ids, LENGTH, 0.1))
    assert (await reader.next())[0] == 2
    event_id, outcome = await reader.next()
    assert event_id == 3 and isinstance(outcome, Finished)
    assert await reader.next() is None


async def test_a_resume_gets_exactly_the_reveals_it_missed_or_a_marked_full_frame():
    engine, registry = FakeEngine(), StreamRegistry(GRACE_S)
    first = registry.open(job(), engine, 60)
    stream, handle = first.stream, engine.handles[0]
    await published(handle, step(1))
    assert (await first.next())[0] == 1
    await published(handle, step(2))
    assert (await first.next())[0] == 2
    first.close()
    await published(handle, step(3))

    in_sync = registry.get(stream.id).attach(last_event_id=2)  # it saw the stream's latest event
    event_id, update = await in_sync.next()
    assert event_id == 3 and update.step == 3 and [r.pos for r in update.changed] == [2]

    behind = registry.get(stream.id).attach(last_event_id=2)  # event 3 was sent but never arrived
    assert not behind.full
    event_id, update = await behind.next()
    assert event_id == 4 and update.step == 3 and [r.pos for r in update.changed] == [2], "only what it missed"
    ended = await in_sync.next()
    assert ended is not None and ended[0] is None and ended[1].reason == "taken_over", "the old one says why"
    assert await in_sync.next() is None

    lost = registry.get(stream.id).attach(last_event_id=None)  # no id: every reveal, marked as a full frame
    assert lost.full
    event_id, update = await lost.next()
    assert event_id == 5 and [r.pos for r in update.changed] == [0, 1, 2]
    assert not handle.cancelled


async def test_a_cancelled_stream_ends_its_connection_with_an_error_that_says_so():
    engine, registry = FakeEngine(), StreamRegistry(GRACE_S)
    reader = registry.open(job(), engine, 60)
    registry.get(reader.stream.id).cancel()
    ended = await reader.next()
    assert ended is not None and ended[0] is None and ended[1].reason == "cancelled"
    assert engine.handles[0].cancelled and await reader.next() is None


async def test_a_client_dropping_streams_finds_its_oldest_detached_one_first():
    engine, registry = FakeEngine(), StreamRegistry(GRACE_S)
    readers = [registry.open(Job(job().spec, "fake", client="greedy"), engine, 60) for _ in range(3)]
    registry.open(Job(job().spec, "fake", client="other"), engine, 60).close()
    for reader in (readers[1], readers[0]):  # the second drops first
        reader.close()
    assert [s.handle for s in registry.detached("greedy")] == [engine.handles[1], engine.handles[0]]
    assert [s.handle for s in registry.detached("other")] == [engine.handles[3]]


async def test_a_resume_after_revisions_gets_each_positions_latest_change():
    """Revision sampling: position 0 is revealed, returned to the mask, written again; position 1 revealed
    then remasked. A reader in sync gets only what changed since its event; a full frame gets each
    position's latest change (the new token at 0, the mask at 1), never the stale reveals."""
    engine, registry = FakeEngine(), StreamRegistry(GRACE_S)
    first = registry.open(job(), engine, 60)
    stream, handle = first.stream, engine.handles[0]
    ids = (100, 101) + (0,) * (LENGTH - 2)
    await published(handle, StepUpdate(1, LENGTH, 0.9, ids, (Reveal(0, 100, 0.5), Reveal(1, 101, 0.5))))
    assert (await first.next())[0] == 1
    first.close()
    masked = (0,) * LENGTH
    await published(handle, StepUpdate(2, LENGTH, 0.8, masked, (), (0, 1)))
    await published(handle, StepUpdate(3, LENGTH, 0.7, (107, *masked[1:]), (Reveal(0, 107, 0.25),)))

    in_sync = registry.get(stream.id).attach(last_event_id=1)
    _, update = await in_sync.next()
    assert update.changed == (Reveal(0, 107, 0.25),) and update.remasked == (1,)
    full = registry.get(stream.id).attach(last_event_id=None)
    _, update = await full.next()
    assert update.changed == (Reveal(0, 107, 0.25),) and update.remasked == (1,)


async def test_an_abandoned_stream_is_cancelled_after_the_grace_unless_resumed():
    engine, registry = FakeEngine(), StreamRegistry(0.05)
    kept = registry.open(job(), engine, 60)
    kept.close()
    kept.stream.attach(None)  # back within the grace
    abandoned = registry.open(job(), engine, 60)
    abandoned.close()
    assert not engine.handles[1].cancelled, "a dropped connection must not cancel at once"
    await asyncio.sleep(0.2)
    assert engine.handles[1].cancelled and not engine.handles[0].cancelled
    with pytest.raises(StreamNotFound):
        registry.get(abandoned.stream.id)
    assert registry.get(kept.stream.id) is kept.stream and len(registry) == 1


async def test_a_finished_stream_answers_its_last_frame_and_outcome_for_the_grace():
    engine, registry = FakeEngine(), StreamRegistry(0.05)
    reader = registry.open(job(), engine, 60)
    reader.close()
    await published(engine.handles[0], step(1), step(2), Finished(step(2).ids, 2, 0.1))
    late = registry.get(reader.stream.id).attach(last_event_id=None)
    _, frame = await late.next()
    assert [r.pos for r in frame.changed] == [0, 1]
    assert isinstance((await late.next())[1], Finished)
    await asyncio.sleep(0.2)
    with pytest.raises(StreamNotFound):
        registry.get(reader.stream.id)


async def test_without_a_grace_a_client_that_leaves_cancels_at_once():
    engine, registry = FakeEngine(), StreamRegistry(0)
    registry.open(job(), engine, 60).close()
    assert engine.handles[0].cancelled and len(registry) == 0


# --- over TCP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir):
    """uvicorn in a thread, serving the tiny checkpoint slowed down; yields the base URL and the app."""
    settings = Settings(
        model=str(tiny_checkpoint_dir), device="cpu", port=0, ping_interval=0, resume_grace=GRACE_S, log_level="warning"
    )
    with slowed_forward(FORWARD_DELAY_S), running_server(settings) as (url, app):
        yield url, app


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server[0], timeout=30) as client:
        yield client


def serving_of(server):
    return server[1].state.runtime.loaded


async def wait_for(condition, failure: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.02)


async def first_steps(client, request: dict, n: int) -> tuple[str, list]:
    """Open a stream, read `n` step events, then drop the connection; its id and the events."""
    async with aconnect_sse(client, "POST", "/generate", json={**request, "stream": True}) as source:
        stream_id = source.response.headers["x-stream-id"]
        events = []
        async for event in source.aiter_sse():
            events.append(event)
            if len(events) == n:
                break
    return stream_id, events


async def resumed(client, stream_id: str, last_event_id: str | None = None) -> list:
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    async with aconnect_sse(client, "GET", f"/generate/{stream_id}", headers=headers) as source:
        source.response.raise_for_status()
        return [event async for event in source.aiter_sse()]


def reveals(events) -> dict[int, int]:
    """Position -> token of every reveal the events carry; fails if one position is given two tokens."""
    tokens: dict[int, int] = {}
    for event in events:
        if event.event == "step":
            for reveal in json.loads(event.data)["changed"]:
                assert tokens.setdefault(reveal["pos"], reveal["id"]) == reveal["id"], reveal
    return tokens


async def test_a_dropped_stream_resumes_and_writes_the_same_story(client, server):
    engine = serving_of(server).engine
    before = engine.stats.snapshot()
    request = {"length": 48, "steps": 48, "remasking": "low_confidence", "temperature": 1.0, "seed": 3}
    stream_id, seen = await first_steps(client, request, 3)
    assert re.fullmatch(STREAM_ID_PATTERN, stream_id) and len(stream_id) >= 22

    rest = await resumed(client, stream_id, seen[-1].id)
    ids = [int(e.id) for e in seen + rest]
    assert ids == sorted(set(ids)), "event ids go on across the connections"
    assert [e.event for e in rest[:-1]] == ["step"] * (len(rest) - 1) and rest[-1].event == "done"
    first, last_seen = json.loads(rest[0].data), json.loads(seen[-1].data)
    assert first["step"] >= last_seen["step"]
    done = json.loads(rest[-1].data)
    assert done["steps"] == 48 and done["seed"] == 3

    # the client's view is complete: every position revealed once, as in the final story
    tokens = reveals(seen + rest)
    prompt_positions = 48 - json.loads(seen[0].data)["masked"] - len(json.loads(seen[0].data)["changed"])
    assert len(tokens) == 48 - prompt_positions
    assert all(done["tokens"][pos] == token for pos, token in tokens.items())
    uninterrupted = (await client.post("/generate", json={**request, "stream": False})).json()
    assert uninterrupted["tokens"] == done["tokens"] and uninterrupted["text"] == done["text"]
    after = engine.stats.snapshot()
    assert after.cancelled == before.cancelled and after.completed == before.completed + 2


async def test_a_resume_without_last_event_id_starts_with_a_full_frame(client):
    request = {"length": 48, "steps": 48, "remasking": "low_confidence"}
    stream_id, seen = await first_steps(client, request, 2)
    rest = await resumed(client, stream_id)
    frame = json.loads(rest[0].data)
    assert frame["full"] is True, "a full frame says so (issue 29)"
    assert all("full" not in json.loads(event.data) for event in [*seen, *rest[1:]] if event.event == "step")
    prompt_positions = 48 - json.loads(seen[0].data)["masked"] - len(json.loads(seen[0].data)["changed"])
    assert len(frame["changed"]) == 48 - prompt_positions - frame["masked"] > 0  # all revealed so far
    assert set(reveals(seen)) <= {reveal["pos"] for reveal in frame["changed"]}
    assert rest[-1].event == "done"


async def test_a_stream_that_ended_while_away_answers_its_frame_and_done_at_once(client, server):
    engine = serving_of(server).engine
    completed = engine.stats.snapshot().completed
    request = {"length": 24, "steps": 12, "seed": 5}
    stream_id, seen = await first_steps(client, request, 1)
    await wait_for(lambda: engine.stats.snapshot().completed == completed + 1, "the story did not finish")
    rest = await resumed(client, stream_id, seen[-1].id)
    assert [e.event for e in rest] == ["step", "done"]
    assert json.loads(rest[0].data)["masked"] == 0
    expected = (await client.post("/generate", json=request)).json()
    assert json.loads(rest[1].data)["tokens"] == expected["tokens"]


async def test_a_resume_takes_over_the_connection_the_server_still_holds(client):
    request = {"length": 48, "steps": 96, "remasking": "low_confidence"}
    async with aconnect_sse(client, "POST", "/generate", json={**request, "stream": True}) as old:
        events = old.aiter_sse()
        await anext(events)
        rest = await resumed(client, old.response.headers["x-stream-id"])
        leftover = [event async for event in events]  # ends: the resume took the stream over
    assert rest[-1].event == "done"
    assert all(event.event != "done" for event in leftover)


async def test_cancel_frees_the_slot_at_once_and_the_stream_is_gone(client, server):
    engine = serving_of(server).engine
    before = engine.stats.snapshot()
    request = {"stream": True, "length": 48, "steps": 2000, "remasking": "low_confidence"}
    async with aconnect_sse(client, "POST", "/generate", json=request) as source:
        stream_id = source.response.headers["x-stream-id"]
        events = source.aiter_sse()
        await anext(events)
        assert (await client.delete(f"/generate/{stream_id}")).status_code == 204
        leftover = [event async for event in events]  # the server ends the connection
    assert all(event.event == "step" for event in leftover[:-1])
    assert leftover[-1].event == "error" and json.loads(leftover[-1].data)["error"] == "cancelled"
    # far sooner than the grace: the cancel, not the expiry, freed it
    await wait_for(lambda: engine.stats.snapshot().active == 0, "the cancelled story kept its slot")
    assert engine.stats.snapshot().cancelled == before.cancelled + 1
    assert (await client.get(f"/generate/{stream_id}")).status_code == 404
    assert (await client.delete(f"/generate/{stream_id}")).status_code == 404


async def test_an_abandoned_stream_frees_its_slot_after_the_grace_then_is_404(client, server):
    streams, engine = serving_of(server).streams, serving_of(server).engine
    before = engine.stats.snapshot()
    streams.grace_s = 0.5
    try:
        stream_id, _ = await first_steps(client, {"length": 48, "steps": 2000, "remasking": "low_confidence"}, 2)
        await wait_for(lambda: engine.stats.snapshot().active == 0, "the abandoned story kept its slot")
    finally:
        streams.grace_s = GRACE_S
    assert engine.stats.snapshot().cancelled == before.cancelled + 1
    gone = await client.get(f"/generate/{stream_id}", headers={"Last-Event-ID": "2"})
    assert gone.status_code == 404 and "no such stream" in gone.json()["detail"]


async def test_unknown_and_malformed_stream_ids(client):
    unknown = await client.get("/generate/" + "A" * 22)
    assert unknown.status_code == 404 and "resume_grace" in unknown.json()["detail"]
    assert (await client.delete("/generate/" + "A" * 22)).status_code == 404
    assert (await client.get("/generate/not.an.id")).status_code == 422
    bad_last_id = await client.get("/generate/" + "A" * 22, headers={"Last-Event-ID": "seven"})
    assert bad_last_id.status_code == 422


async def test_the_resume_routes_are_in_the_openapi_schema(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    route = paths["/generate/{stream_id}"]
    assert {"get", "delete"} <= set(route)
    assert "last-event-id" in {p["name"].lower() for p in route["get"]["parameters"]}
    assert "404" in route["get"]["responses"] and "text/event-stream" in route["get"]["responses"]["200"]["content"]


async def test_with_api_keys_resuming_and_cancelling_need_a_key(tiny_checkpoint_dir):
    settings = Settings(model=str(tiny_checkpoint_dir), device="cpu", ping_interval=0, api_keys=["a-secret-key"])
    key = {"Authorization": "Bearer a-secret-key"}
    async with LifespanManager(create_app(settings), startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            await wait_for_ready(client)
            opened = await client.post("/generate", json={"stream": True, "length": 16, "steps": 4}, headers=key)
            stream_id = opened.headers["x-stream-id"]
            assert (await client.get(f"/generate/{stream_id}")).status_code == 401
            assert (await client.delete(f"/generate/{stream_id}")).status_code == 401
            again = await client.get(f"/generate/{stream_id}", headers=key)
            assert again.status_code == 200 and "event: done" in again.text


async def wait_for_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 60
    while (await client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        await asyncio.sleep(0.02)
