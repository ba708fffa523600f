"""Hostile input in-process: errors that stay bounded and encodable, body limits, typed special tokens,
per-request cost, refusals of work that cannot finish in time, drafts of timed-out stories."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from httpx_sse import aconnect_sse

import app.diffusion.cpu_forward as cpu_forward
from app.api.errors import MAX_ERRORS, echo, validation_details
from app.api.limits import DRAIN_BYTES
from app.diffusion.text import MASK_PLACEHOLDER, prompt_ids
from app.engine.forward_plan import ForwardCost
from tests.conftest import slowed_forward
from tests.support.service import Service, settings_for

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
async def client(tiny_checkpoint_dir):
    async with Service(settings_for(tiny_checkpoint_dir, max_body_size=16 * 2**20)) as client:
        yield client


async def post_raw(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post("/generate", content=content, headers=JSON)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"prompt": "\\ud800"}', "prompt"),  # a lone surrogate: valid JSON, not encodable as UTF-8
        (b'{"prompt": "\\udfff", "steps": 0}', "steps"),
        (b'{"\\ud800": 1}', None),
    ],
    ids=["surrogate", "surrogate-and-another-error", "surrogate-key"],
)
async def test_a_lone_surrogate_is_a_422_that_encodes(client, content, field):
    response = await post_raw(client, content)
    assert response.status_code == 422, response.text
    errors = json.loads(response.content.decode("utf-8"))["detail"]
    assert field is None or any(error["loc"][-1] == field for error in errors)
    assert "\ufffd" in response.text  # the surrogate, replaced where it is echoed


async def test_deeply_nested_input_is_a_422(client):
    response = await post_raw(client, b'{"junk": ' + b"[" * 600 + b"]" * 600 + b"}")
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "junk"] and len(response.content) < 1000


async def test_errors_echo_a_bounded_summary_of_huge_input(client):
    huge = b'{"junk": [' + b",".join([b"0"] * 1_000_000) + b"]}"  # 2 MB, under this client's raised limit
    response = await post_raw(client, huge)
    assert response.status_code == 422
    assert len(response.content) < 1000  # FastAPI's default echoed all 2 MB back
    [error] = response.json()["detail"]
    assert error["input"][-1] == "… 999992 more items"


async def test_many_errors_are_cut_to_a_few(client):
    response = await client.post("/generate", json={f"field{i}": i for i in range(500)})
    errors = response.json()["detail"]
    assert response.status_code == 422 and len(errors) == MAX_ERRORS + 1
    assert errors[-1]["msg"] == f"{500 - MAX_ERRORS} more errors not shown"


def test_echo_bounds_every_kind_of_value():
    assert echo(float("inf")) == "inf" and echo(float("nan")) == "nan"
    assert echo("x" * 1000) == "x" * 200 + "…"
    assert echo(10**1000).startswith("an integer of 1001 digits")
    assert echo({"a": {"b": {"c": 1}}}) == {"a": {"b": "an object of 1 keys"}}
    assert echo(list(range(20)))[-1] == "… 12 more items"
    assert echo({str(i): i for i in range(20)})["…"] == "12 more keys"
    json.dumps(validation_details([{"type": "x", "loc": ("body", "\ud800"), "msg": "m", "ctx": {"e": ValueError()}}]))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_before_it_is_read(tiny_checkpoint_dir, chunked):
    pulled = []

    async def body():
        for i in range(64):
            pulled.append(i)
            yield b" " * 1024

    async with Service(settings_for(tiny_checkpoint_dir, max_body_size=4096)) as small:
        # A declared length past DRAIN_BYTES is refused unread; a smaller body over the limit is read to its
        # end and thrown away, so that a client that writes it all before reading sees the 413 (issue 29).
        headers = JSON if chunked else {**JSON, "content-length": str(2 * DRAIN_BYTES)}
        response = await small.post("/generate", content=body(), headers=headers)
        assert response.status_code == 413 and response.headers["connection"] == "close"
        assert "4096 bytes" in response.json()["detail"]
        assert len(pulled) == (0 if not chunked else 64)
        under = await small.post("/generate", content=json.dumps({"length": 8, "steps": 2}), headers=JSON)
        assert under.status_code == 200
        metrics = (await small.get("/metrics")).text
    assert 'storydiff_refused_requests_total{reason="body_too_large"} 1.0' in metrics


async def test_a_body_that_stalls_is_408(tiny_checkpoint_dir):
    async def stalled():
        yield b'{"length": '
        await asyncio.sleep(60)

    async with Service(settings_for(tiny_checkpoint_dir, body_timeout=0.3)) as slow:
        response = await slow.post("/generate", content=stalled(), headers=JSON)
        assert response.status_code == 408 and response.headers["connection"] == "close"
        assert (await slow.post("/generate", json={"length": 8, "steps": 2})).status_code == 200


def test_typed_special_tokens_are_text(cased_tokenizer):
    ids = prompt_ids(cased_tokenizer, "Once [MASK] [MASK] a time [PAD] there [SEP] was [CLS] a fox")
    special = set(cased_tokenizer.all_special_ids)
    assert ids[0] == cased_tokenizer.cls_token_id and not special & set(ids[1:])


async def test_typed_masks_are_kept_and_a_typed_pad_does_not_end_the_story(client, cased_tokenizer):
    prompt = "Once [MASK] [MASK] a time [PAD] there was"
    body = (await client.post("/generate", json={"prompt": prompt, "length": 40, "steps": 8, "seed": 1})).json()
    prefix = prompt_ids(cased_tokenizer, prompt)
    assert body["tokens"][: len(prefix)] == prefix  # the typed words stayed words, none was denoised
    assert body["text"].startswith("Once [MASK] [MASK] a time [PAD] there was")


async def test_requests_over_the_cost_cap_are_422_naming_it(tiny_checkpoint_dir):
    async with Service(settings_for(tiny_checkpoint_dir, max_request_cost=100)) as capped:
        over = await capped.post("/generate", json={"length": 16, "steps": 8})
        assert over.status_code == 422
        [error] = over.json()["detail"]
        assert error["loc"] == ["body", "steps"] and "16 = 128, above this server's cap of 100" in error["msg"]
        assert (await capped.post("/generate", json={"length": 16, "steps": 6})).status_code == 200
        over_canvas = await capped.post("/canvas", json={"length": 16, "steps": 8})  # the same cap (issue 29)
        assert over_canvas.status_code == 422 and over_canvas.json()["detail"][0]["loc"] == ["body", "steps"]
        assert (await capped.post("/canvas", json={"length": 16, "steps": 6})).status_code == 200


async def test_work_that_cannot_finish_in_time_is_refused_up_front(tiny_checkpoint_dir, monkeypatch):
    release = threading.Event()
    original = cpu_forward.logits_at

    def held_logits_at(model, x, query, attention_mask=None):
        release.wait(10)
        return original(model, x, query, attention_mask)

    release.set()  # let the warm-up through
    monkeypatch.setattr(cpu_forward, "logits_at", held_logits_at)
    service = Service(settings_for(tiny_checkpoint_dir, max_batch=1, timeout=5, retry_after=2, admission_margin=1.0))
    async with service as client:
        service.engine.forward_cost = ForwardCost(per_pass_s=0.5, per_position_s=0.0)  # a slow device
        request = {"length": 16, "steps": 8, "remasking": "low_confidence"}  # alone: 8 x 0.5 s = 4 s
        alone = await client.post("/generate", json={**request, "steps": 12})
        assert alone.status_code == 422 and "alone would take about 6 s" in alone.json()["detail"][0]["msg"]
        release.clear()
        running = asyncio.create_task(client.post("/generate", json=request))
        deadline = time.monotonic() + 5
        while service.engine.stats.snapshot().active < 1:
            assert time.monotonic() < deadline, "the first request never started"
            await asyncio.sleep(0.01)
        refused = await client.post("/generate", json=request)  # behind it: 2 x 8 x 0.5 s = 8 s > 5 s
        assert refused.status_code == 429 and refused.json()["timeout_s"] == 5
        assert refused.json()["estimate_s"] == pytest.approx(8.0, abs=0.2)
        # Retry-After from the work ahead (the running story's 4 s), not the fixed `retry_after` (2)
        assert 4 <= int(refused.headers["retry-after"]) <= 5
        release.set()
        assert (await running).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'storydiff_refused_requests_total{reason="over_timeout"} 1.0' in metrics


async def test_a_timed_out_request_returns_its_draft(tiny_checkpoint_dir):
    settings = settings_for(tiny_checkpoint_dir, timeout=0.4, refuse_over_timeout=False)
    request = {"prompt": "Once upon a time", "length": 32, "steps": 32, "remasking": "low_confidence"}
    with slowed_forward(0.05):
        async with Service(settings) as client:
            answer = await client.post("/generate", json=request)
            assert answer.status_code == 504
            draft = answer.json()["draft"]
            assert draft.startswith("Once upon a time") and MASK_PLACEHOLDER in draft
            async with aconnect_sse(client, "POST", "/generate", json={**request, "stream": True}) as source:
                events = [event async for event in source.aiter_sse()]
    error = json.loads(events[-1].data)
    assert events[-1].event == "error" and error["error"] == "timeout"
    assert error["draft"].startswith("Once upon a time") and MASK_PLACEHOLDER in error["draft"]


async def test_info_metrics_and_answers_name_the_model_without_its_path(client, tiny_checkpoint_dir):
    info = (await client.get("/info")).json()
    story = (await client.post("/generate", json={"length": 8, "steps": 2})).json()
    metrics = (await client.get("/metrics")).text
    assert info["model"] == story["model"] == tiny_checkpoint_dir.name
    assert str(tiny_checkpoint_dir.parent) not in json.dumps(info) + metrics


def test_a_revising_request_is_estimated_at_one_forward_a_step():
    """Revision sampling writes words again, so a story may take more forwards than it has positions."""
    from app.diffusion.sampler_settings import SamplerSettings
    from app.engine import GenerationSpec, RequestHandle
    from app.engine.step_cost import Work

    once, revising = (SamplerSettings(steps=40, revision=rate) for rate in (0.0, 0.1))

    def forwards_left(settings: SamplerSettings) -> int:
        handle = RequestHandle(GenerationSpec((1,), 17, settings, seed=0), lambda update: None, 0.0)
        return Work.of(handle, steps_done=0, forwards_done=0, running=False).forwards_left

    assert forwards_left(once) == 16  # a forward per written token
    assert forwards_left(revising) == 40  # a forward every step
