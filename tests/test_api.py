"""The HTTP API in-process (httpx ASGITransport + asgi-lifespan) with a tiny random checkpoint."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import get_args

import httpx
import pytest
from asgi_lifespan import LifespanManager
from httpx_sse import aconnect_sse

import app.api.jobs as jobs_module
import app.api.runtime as runtime_module
import app.diffusion.cpu_forward as cpu_forward
from app.api import create_app
from app.api.schemas import ErrorEvent
from app.api.serving import FAILURE_STATUS
from app.config import Settings
from app.diffusion.diffusion_config import DIFFUSION_CONFIG_NAME, DiffusionConfig
from app.diffusion.sampler_settings import SEED_BITS, SamplerSettings
from app.diffusion.text import MASK_PLACEHOLDER
from app.engine.request import FailureReason
from tests.conftest import TINY_SEQ_LEN, slowed_forward
from tests.support.service import Service, settings_for, wait_ready

pytestmark = pytest.mark.anyio


async def test_generate_json_with_defaults(client):
    response = await client.post("/generate", json={})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "text", "seed", "steps", "length", "tokens", "elapsed_s", "forwards", "tokens_per_forward", "model",
        "request_id",
    }  # fmt: skip
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["length"] == TINY_SEQ_LEN >= len(body["tokens"])  # the PAD tail is left out
    assert body["steps"] == TINY_SEQ_LEN  # no sampler.num_steps in the checkpoint: one step per token
    assert isinstance(body["seed"], int) and body["elapsed_s"] >= 0
    info = (await client.get("/info")).json()
    assert info["max_length"] == 64 and body["model"] == info["model"]


async def test_same_seed_same_story_and_prompt_kept(client):
    request = {"prompt": "Once upon a time", "length": 32, "steps": 8, "seed": 11, "temperature": 1.0}
    first, second = [(await client.post("/generate", json=request)).json() for _ in range(2)]
    assert first["tokens"] == second["tokens"] and first["seed"] == 11
    other = (await client.post("/generate", json={**request, "seed": 12})).json()
    assert other["tokens"] != first["tokens"]
    assert first["tokens"][:5] == [101, 2857, 1852, 170, 1159]  # [CLS] Once upon a time


async def test_sse_stream_in_process(client):
    request = {"stream": True, "length": 24, "steps": 9, "stream_every": 4, "seed": 5}
    async with aconnect_sse(client, "POST", "/generate", json=request) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in source.aiter_sse()]
    steps = [json.loads(e.data) for e in events if e.event == "step"]
    sent = [s["step"] for s in steps]
    assert set(sent) <= {4, 8, 9} and sent == sorted(sent) and sent[-1] == 9  # a lagging reader gets fewer
    assert events[-1].event == "done"
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    done = json.loads(events[-1].data)
    assert done["text"] == steps[-1]["text"] and steps[-1]["masked"] == 0
    assert MASK_PLACEHOLDER not in done["text"]
    assert sum(len(s["changed"]) for s in steps) == 24  # every position revealed, none lost
    json_result = (await client.post("/generate", json={**request, "stream": False})).json()
    assert json_result["tokens"] == done["tokens"]  # streaming changes nothing about the story


async def test_accept_header_selects_the_stream(client):
    response = await client.post("/generate", json={"length": 16, "steps": 2}, headers={"accept": "text/event-stream"})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: done" in response.text
    explicit = await client.post(
        "/generate", json={"length": 16, "steps": 2, "stream": False}, headers={"accept": "text/event-stream"}
    )
    assert explicit.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": "ten"}, "steps"),
        ({"steps": None}, "steps"),  # null means "off", and steps cannot be off
        ({"remasking": None}, "remasking"),
        ({"temperature": None}, "temperature"),
        ({"steps": "64"}, "steps"),  # strict: no silent string -> int coercion
        ({"steps": 0}, "steps"),
        ({"steps": 4097}, "steps"),
        ({"length": 0}, "length"),
        ({"length": 65}, "length"),  # above the model's 64 positions
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"block_length": 0}, "block_length"),
        ({"block_length": "8"}, "block_length"),
        ({"seed": -1}, "seed"),
        ({"remasking": "sideways"}, "remasking"),
        ({"stream": "yes"}, "stream"),
        ({"stream_every": 0}, "stream_every"),
        ({"prompt": 42}, "prompt"),
        ({"colour": "blue"}, "colour"),  # unknown fields are rejected, not ignored
        ({"length": 4, "prompt": "Once upon a time there was a dragon"}, "prompt"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(client, body, field):
    response = await client.post("/generate", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"][-1] == field and error["msg"] for error in errors), errors


async def test_block_length_reaches_the_sampler_and_null_turns_blocks_off(tiny_checkpoint_dir, copy_of):
    directory = copy_of(tiny_checkpoint_dir)
    config = DiffusionConfig.load(directory / DIFFUSION_CONFIG_NAME)
    config.sampler.block_length = 8
    config.save(directory)
    async with Service(settings_for(directory)) as blocked:
        assert (await blocked.get("/info")).json()["defaults"]["block_length"] == 8
        request = {"remasking": "low_confidence", "steps": 16, "temperature": 1.0, "seed": 5}
        default, explicit, off = [
            (await blocked.post("/generate", json=body)).json()["tokens"]
            for body in (request, {**request, "block_length": 8}, {**request, "block_length": None})
        ]
    assert default == explicit  # absent: the checkpoint's 8
    assert off != default  # null: no blocks, another order of reveals and so another story


async def test_null_top_p_turns_the_checkpoints_nucleus_off(client, tiny_checkpoint_dir, copy_of):
    directory = copy_of(tiny_checkpoint_dir)
    config = DiffusionConfig.load(directory / DIFFUSION_CONFIG_NAME)
    config.sampler.top_p = 0.1
    config.save(directory)
    request = {"length": 24, "steps": 8, "temperature": 1.0, "seed": 3}
    async with Service(settings_for(directory)) as nucleus:
        assert (await nucleus.get("/info")).json()["defaults"]["top_p"] == 0.1
        default, off = [await nucleus.post("/generate", json=body) for body in (request, {**request, "top_p": None})]
    assert default.status_code == off.status_code == 200
    plain = (await client.post("/generate", json=request)).json()  # the same weights, no top_p in the checkpoint
    assert off.json()["tokens"] == plain["tokens"]  # null: no nucleus at all
    assert default.json()["tokens"] != plain["tokens"]  # absent: the checkpoint's 0.1


async def test_seeds_the_server_chooses_come_from_the_one_rule(client, monkeypatch):
    seeds = [(await client.post("/generate", json={"length": 8, "steps": 1})).json()["seed"] for _ in range(3)]
    assert all(0 <= seed < 2**SEED_BITS for seed in seeds)
    monkeypatch.setattr(jobs_module, "new_seed", lambda: 1234)
    assert (await client.post("/generate", json={"length": 8, "steps": 1})).json()["seed"] == 1234


def test_the_request_schema_has_the_declared_sampler_fields_and_bounds():
    def bounds(prop: dict) -> dict:
        """A property's type and bounds, without what documents it."""
        return {key: value for key, value in prop.items() if key not in ("title", "description", "default")}

    request = create_app(Settings(model="unused")).openapi()["components"]["schemas"]["GenerateRequest"]
    declared = SamplerSettings.model_json_schema(ref_template="#/components/schemas/{model}")["properties"]
    assert set(request["properties"]) == set(declared) | {
        "preset",
        "prompt",
        "ending",
        "segments",
        "edit",
        "length",
        "seed",
        "stream",
        "stream_every",
        "stream_format",
    }
    for name, prop in declared.items():
        assert bounds(request["properties"][name]) == bounds(prop), name
        assert "default" not in request["properties"][name]  # absent is not null: the default comes from below
    assert request["additionalProperties"] is False


def test_failure_reasons_have_one_status_each_and_one_schema():
    reasons = set(get_args(FailureReason))
    assert set(FAILURE_STATUS) == reasons
    assert all(400 <= status < 600 for status in FAILURE_STATUS.values())
    assert set(ErrorEvent.model_json_schema()["properties"]["error"]["enum"]) == reasons


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"steps": 4'], ids=["text", "list", "cut"])
async def test_non_json_body_is_422(client, content):  # no body (or null) is `{}`: tests/test_first_requests.py
    response = await client.post("/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


async def test_info_and_openapi(client):
    info = (await client.get("/info")).json()
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["parameters"] > 0
    assert info["defaults"] == {
        "length": TINY_SEQ_LEN,
        "steps": TINY_SEQ_LEN,
        "remasking": "random",
        "temperature": 0.0,
        "top_k": None,
        "top_p": None,
        "block_length": None,
        "confidence_threshold": 0.9,
        "entropy_budget": 1.0,
        "guard_endings": False,
        "endings": "sampled",
        "revision": 0.0,
    }
    assert info["engine"]["forward_calls"] >= 1 and info["version"]
    schema = (await client.get("/openapi.json")).json()
    request_schema = schema["components"]["schemas"]["GenerateRequest"]
    assert request_schema["additionalProperties"] is False
    assert request_schema["properties"]["steps"]["maximum"] == 4096
    event = schema["paths"]["/generate"]["post"]["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]
    refs = [ref["$ref"] for ref in event["properties"]["data"]["contentSchema"]["oneOf"]]
    names = [ref.removeprefix("#/components/schemas/") for ref in refs]
    assert names == ["StepEvent", "StepDelta", "GenerateResponse", "ErrorEvent"]
    assert all(name in schema["components"]["schemas"] for name in [*names, "Revealed"])


async def test_queue_full_is_429_with_retry_after(tiny_checkpoint_dir, monkeypatch):
    release = threading.Event()

    def held_logits_at(model, x, query, attention_mask=None):
        release.wait(10)
        return cpu_forward.logits_at.__wrapped_original__(model, x, query, attention_mask)

    held_logits_at.__wrapped_original__ = cpu_forward.logits_at  # type: ignore[attr-defined]
    service = Service(settings_for(tiny_checkpoint_dir, max_batch=1, max_queue=1, retry_after=3))
    release.set()  # let the warm-up through
    monkeypatch.setattr(cpu_forward, "logits_at", held_logits_at)
    async with service as client:
        release.clear()
        request = {"length": 16, "steps": 2, "remasking": "low_confidence"}
        running = [asyncio.create_task(client.post("/generate", json=request)) for _ in range(2)]
        deadline = time.monotonic() + 5
        while service.engine.stats.snapshot().waiting < 1:  # one running (held), one queued
            assert time.monotonic() < deadline, "the second request never queued"
            await asyncio.sleep(0.01)
        refused = await client.post("/generate", json=request)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        release.set()
        assert [r.status_code for r in await asyncio.gather(*running)] == [200, 200]
        assert (await client.post("/generate", json=request)).status_code == 200


async def test_timeout_is_504_json(tiny_checkpoint_dir):
    # refuse_over_timeout off: with it, the server refuses up front what cannot finish in 0.3 s
    settings = settings_for(tiny_checkpoint_dir, timeout=0.3, refuse_over_timeout=False)
    with slowed_forward(0.05):
        async with Service(settings) as client:
            response = await client.post("/generate", json={"length": 32, "steps": 32, "remasking": "low_confidence"})
            assert response.status_code == 504 and response.json()["error"] == "timeout"


async def test_ready_is_503_until_the_model_is_loaded(tiny_checkpoint_dir, monkeypatch):
    loaded = threading.Event()
    original = runtime_module.load_checkpoint

    def held_load(*args, **kwargs):
        loaded.wait(20)
        return original(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "load_checkpoint", held_load)
    app = create_app(settings_for(tiny_checkpoint_dir))
    async with LifespanManager(app, startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health")).status_code == 200
            not_ready = await client.get("/ready")
            assert not_ready.status_code == 503 and not_ready.json()["status"] == "loading"
            assert (await client.post("/generate", json={})).status_code == 503
            assert (await client.get("/info")).status_code == 503
            loaded.set()
            await wait_ready(client)
            assert (await client.get("/ready")).json()["status"] == "ready"


async def test_a_model_that_cannot_load_shows_on_ready(tmp_path):
    app = create_app(settings_for(tmp_path / "nowhere"))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert await app.state.runtime.wait_settled() is False
            response = await client.get("/ready")
            assert response.status_code == 503
            assert response.json()["status"] == "failed" and "does not exist" in response.json()["detail"]
            assert (await client.get("/health")).status_code == 200
