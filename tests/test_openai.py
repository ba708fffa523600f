"""The OpenAI-compatible API: the official `openai` client against a real uvicorn on a free port, and
the stable-prefix rule that makes a diffusion draft's stream deltas final."""

from __future__ import annotations

import random
import time

import httpx
import openai
import pytest
import torch

from app.api.openai.text import CompletionText, completion_of
from app.config import Settings
from app.diffusion.text import decode_story, prompt_ids
from tests.conftest import STORIES_DIR, running_server, slowed_forward

API_KEY = "test-key"
FORWARD_DELAY_S = 0.005  # a story of many steps lasts long enough to leave it midway
PROMPT = "Once upon a time"
FAST = {"steps": 24, "remasking": "low_confidence", "block_length": 4}
"""Blocks reveal left to right, so the stable prefix grows step by step and the stream has many deltas."""
SAMPLED = {"temperature": 1.0, "max_tokens": 24, "extra_body": FAST}


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir):
    """uvicorn in a thread serving the tiny checkpoint behind an API key; yields the base URL."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = Settings(model=str(tiny_checkpoint_dir), device="cpu", port=0, log_level="warning", api_keys=[API_KEY])
    with slowed_forward(FORWARD_DELAY_S), running_server(settings) as (url, _):
        yield url
    torch.set_num_threads(threads)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client, tiny_checkpoint_dir) -> str:
    return client.models.list().data[0].id


def story(server: str, **body) -> dict:
    answer = httpx.post(f"{server}/generate", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def streamed(client: openai.OpenAI, model: str, **request) -> tuple[dict[int, str], dict[int, str], list]:
    """Each choice's concatenated text and finish reason, and every chunk."""
    chunks = list(client.completions.create(model=model, prompt=PROMPT, stream=True, **request))
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in chunks:
        assert chunk.object == "text_completion" and chunk.id == chunks[0].id
        for choice in chunk.choices:
            assert choice.index not in reasons, "nothing after a choice's finish_reason"
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason is not None:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, chunks


def test_models_lists_the_served_model(client, tiny_checkpoint_dir):
    (card,) = client.models.list().data
    assert card.id == tiny_checkpoint_dir.name and card.owned_by == "storydiff"
    assert card.model_extra["max_model_len"] == 64


def test_n_stories_each_the_engine_request_of_seed_plus_i(client, model, server, cased_tokenizer):
    answer = client.completions.create(model=model, prompt=PROMPT, n=2, seed=5, **SAMPLED)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert [choice.index for choice in answer.choices] == [0, 1]
    assert answer.choices[0].text != answer.choices[1].text
    prefix = prompt_ids(cased_tokenizer, PROMPT)
    for i, choice in enumerate(answer.choices):
        assert choice.model_extra["seed"] == 5 + i and choice.finish_reason in ("stop", "length")
        same = story(server, prompt=PROMPT, length=len(prefix) + 24, seed=5 + i, temperature=1.0, **FAST)
        assert decode_story(prefix, cased_tokenizer) + choice.text == same["text"]  # max_tokens: after the prompt
    usage = answer.usage
    assert usage.prompt_tokens == len(prefix)  # counted once, not once per story
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > usage.prompt_tokens


def test_stream_deltas_add_up_to_the_answer(client, model):
    answer = client.completions.create(model=model, prompt=PROMPT, n=2, seed=7, **SAMPLED)
    texts, reasons, chunks = streamed(client, model, n=2, seed=7, stream_options={"include_usage": True}, **SAMPLED)
    assert texts == {choice.index: choice.text for choice in answer.choices}
    assert reasons == {choice.index: choice.finish_reason for choice in answer.choices}
    deltas = [c.choices[0].text for c in chunks if c.choices and c.choices[0].index == 0 and c.choices[0].text]
    assert len(deltas) > 2, "the stable prefix streams as it grows, not only at the end"
    assert chunks[-1].choices == [] and chunks[-1].usage == answer.usage


def test_diffusing_streams_each_steps_whole_draft(client, model):
    answer = client.completions.create(model=model, prompt=PROMPT, seed=3, **SAMPLED)
    chunks = list(
        client.completions.create(
            model=model,
            prompt=PROMPT,
            seed=3,
            stream=True,
            temperature=1.0,
            max_tokens=24,
            extra_body=FAST | {"diffusing": True},
        )
    )
    drafts = [chunk.choices[0].text for chunk in chunks]
    assert "░" in drafts[0] and "░" not in drafts[-1]
    assert drafts[-1] == answer.choices[0].text and chunks[-1].choices[0].finish_reason is not None
    assert len(drafts) >= FAST["steps"] // 2  # one per step sent (a slow reader's steps merge)


def test_stop_cuts_the_text_alike_streamed_or_not(client, model):
    full = client.completions.create(model=model, prompt=PROMPT, seed=11, **SAMPLED).choices[0].text
    stop = next(word for word in full.split()[2:] if len(word) > 1)
    cut = client.completions.create(model=model, prompt=PROMPT, seed=11, stop=[stop, "never there"], **SAMPLED)
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    texts, reasons, _ = streamed(client, model, seed=11, stop=stop, **SAMPLED)
    assert (texts[0], reasons[0]) == (cut.choices[0].text, "stop")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", 1),
        ("echo", True),
        ("best_of", 3),
        ("suffix", "The end."),
        ("frequency_penalty", 0.5),
        ("temperature", -1.0),
    ],
)
def test_fields_that_change_the_meaning_are_400_naming_them(client, model, field, value):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=4, extra_body={field: value})
    assert raised.value.body["param"] == field and raised.value.body["type"] == "invalid_request_error"


def test_harmless_fields_and_unknown_ones_are_accepted(client, model):
    answer = client.completions.create(
        model=model,
        prompt=[PROMPT],
        max_tokens=4,
        user="someone",
        frequency_penalty=0,
        presence_penalty=0,
        best_of=1,
        logit_bias={},
        extra_body={"steps": 4, "not_an_openai_field": True},
    )
    assert len(answer.choices) == 1


def test_unknown_model_too_long_prompt_and_no_key_are_openai_errors(client, model, server, tiny_checkpoint_dir):
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as raised:  # the server's own path is no name a client may use
        client.completions.create(model=str(tiny_checkpoint_dir), prompt=PROMPT)
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=model, prompt="once " * 100)
    assert raised.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert raised.value.body["type"] == "authentication_error"
    no_key = httpx.post(f"{server}/v1/completions", json={"prompt": PROMPT})
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"].startswith("Bearer")
    assert set(no_key.json()["error"]) == {"message", "type", "param", "code"}


def test_a_client_that_leaves_a_stream_frees_every_story(client, model, server):
    def engine() -> dict:
        return httpx.get(f"{server}/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()["engine"]

    cancelled = engine()["cancelled"]
    request = {"max_tokens": 60, "extra_body": {"steps": 60, "diffusing": True}}
    with client.completions.create(model=model, prompt=PROMPT, n=2, stream=True, **request) as stream:
        next(iter(stream))  # the first step's draft: the stories run
    deadline = time.monotonic() + 30
    while (counters := engine())["cancelled"] < cancelled + 2 or counters["active"]:
        assert time.monotonic() < deadline, counters
        time.sleep(0.05)


def _stories(count: int) -> list[str]:
    text = (STORIES_DIR / "valid.txt").read_text()
    return [story.strip() for story in text.split("<|endoftext|>") if story.strip()][:count]


@pytest.mark.parametrize("prompt_words", [0, 5])
def test_stable_deltas_rebuild_the_final_text_in_any_reveal_order(cased_tokenizer, prompt_words):
    """A draft revealed in random order: every delta is final, and they add up to the final text (also
    when a stop string cuts it)."""
    rng = random.Random(0)
    mask = cased_tokenizer.mask_token_id
    for story_text in _stories(60):
        ids = cased_tokenizer(story_text)["input_ids"][:96]
        prompt = " ".join(story_text.split()[:prompt_words])
        prefix = prompt_ids(cased_tokenizer, prompt)
        prompt_text = decode_story(prefix, cased_tokenizer)
        final = completion_of(decode_story(ids, cased_tokenizer), prompt_text)
        stops = [rng.choice(final.split())] if final.split() and rng.random() < 0.5 else []
        expected = final[: final.index(stops[0])] if stops else final
        order = list(range(len(prefix), len(ids)))
        rng.shuffle(order)
        draft = list(ids[: len(prefix)]) + [mask] * len(order)
        text, pieces = CompletionText(cased_tokenizer, prompt_text, stops), []
        for step in range(0, len(order), 8):
            for pos in order[step : step + 8]:
                draft[pos] = ids[pos]
            if mask in draft:
                pieces.append(text.delta(draft))
                assert expected.startswith(text.sent)
        last, reason = text.final(draft)
        assert "".join(pieces) + last == expected
        assert reason == "stop" if stops else reason in ("stop", "length")
