"""A newcomer's first requests: no body is `{}`, a body without the JSON content-type gets one line
saying so, an over-long prompt at the model's maximum is told to shorten."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_SEQ_LEN

pytestmark = pytest.mark.anyio


async def test_no_body_is_an_empty_request(client):
    answer = await client.post("/generate")
    assert answer.status_code == 200 and answer.json()["length"] == TINY_SEQ_LEN
    assert (await client.post("/canvas")).json()["length"] == TINY_SEQ_LEN


async def test_a_body_without_the_json_content_type_is_one_line_saying_so(client):
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
        answer = await client.post("/generate", content=b'{"steps": 4}', headers=headers)
        assert answer.status_code == 422
        (detail,) = answer.json()["detail"]
        assert detail["msg"] == "send JSON with content-type: application/json" and detail["loc"] == ["body"]
    bad_json = await client.post("/generate", content=b"{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422 and "content-type" not in bad_json.text  # a JSON error stays one


async def test_an_over_long_prompt_at_the_maximum_length_is_told_to_shorten(client):
    long = "word " * 80
    at_max = (await client.post("/generate", json={"prompt": long, "length": 64})).json()["detail"][0]
    assert at_max["loc"] == ["body", "prompt"] and "longer length" not in at_max["msg"]
    assert "maximum" in at_max["msg"]
    shorter = (await client.post("/generate", json={"prompt": long, "length": 40})).json()["detail"][0]
    assert "longer length (up to 64)" in shorter["msg"]
