"""The serving core both front ends share (app/api/submission.py): a failure while rendering a stream
is logged with its traceback and told to the client, on /generate and on /v1 alike."""

from __future__ import annotations

import json
import logging

import pytest
from httpx_sse import aconnect_sse

from app.api import events
from app.api.openai.text import CompletionText

pytestmark = pytest.mark.anyio

STORY = {"stream": True, "length": 16, "steps": 4, "seed": 1, "prompt": "Once upon a time"}


def broken(*args, **kwargs):
    raise RuntimeError("rendering broke")


def traceback_logged(caplog) -> bool:
    return any(
        record.name == "app.api.submission" and record.exc_info and "rendering broke" in str(record.exc_info[1])
        for record in caplog.records
    )


async def test_a_generate_stream_that_fails_to_render_logs_it_and_ends_with_an_error(client, caplog, monkeypatch):
    monkeypatch.setitem(events.STEP_DATA, "json", broken)
    with caplog.at_level(logging.INFO):
        async with aconnect_sse(client, "POST", "/generate", json=STORY) as source:
            got = [(event.event, event.data) async for event in source.aiter_sse()]
    assert [name for name, _ in got] == ["error"]
    assert json.loads(got[0][1]) == {"error": "internal", "detail": "streaming failed: RuntimeError", "draft": None}
    assert traceback_logged(caplog), "a rendering failure must be logged with its traceback"
    ended = [
        getattr(record, "outcome", None) for record in caplog.records if getattr(record, "event", "") == "generation"
    ]
    assert ended == ["failed"], "the request is counted as failed, not as a client that left"


async def test_a_completion_stream_that_fails_to_render_logs_it_and_ends_with_an_error(client, caplog, monkeypatch):
    monkeypatch.setattr(CompletionText, "delta", broken)
    body = {"prompt": "Once upon a time", "max_tokens": 8, "steps": 4, "stream": True}
    with caplog.at_level(logging.INFO):
        async with aconnect_sse(client, "POST", "/v1/completions", json=body) as source:
            data = [event.data async for event in source.aiter_sse()]
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["message"] == "streaming failed: RuntimeError"
    assert traceback_logged(caplog)
