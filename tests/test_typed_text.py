"""What a person types comes back as typed: accents, emoji, CJK and curly quotes in the prompt, the
ending and segments, over the API and `storydiff generate`, on the shipped model's vocabulary (where
"Zoë" is one [UNK]) and on the cased test vocabulary."""

from __future__ import annotations

import json

import pytest
from httpx_sse import aconnect_sse

from app.cli import main
from app.diffusion.canvas import Blank, Text, build_canvas, prompt_template
from app.diffusion.text import FixedSpan, clean_text, prompt_ids, prompt_span, story_text
from app.diffusion.typed_text import model_text
from tests.support.service import Service, settings_for

TYPED = [
    "A cat named Zoë went to the café.",
    "José and Zürich were naïve 🐱.",
    "猫が好き",
    "It’s “time”, she said.",
    "‘Hi’ — said Tom…",
]
"""Text a person types that a plain-ASCII story vocabulary lacks."""


@pytest.fixture(scope="module")
async def shipped_client(shipped_vocab_dir):
    async with Service(settings_for(shipped_vocab_dir)) as client:
        yield client


def test_the_model_reads_a_normalised_copy(shipped_tokenizer):
    assert model_text("Zoë’s café — “hi”…") == 'Zoe\'s cafe - "hi"...'
    assert model_text("猫が好き 🐱") == "猫が好き 🐱"  # nothing ASCII to fall back to: kept for the tokenizer
    unk = shipped_tokenizer.unk_token_id
    assert unk not in prompt_ids(shipped_tokenizer, "A cat named Zoë in Zürich")


def test_typed_text_is_read_back_as_typed_around_written_tokens(shipped_tokenizer):
    tok = shipped_tokenizer
    for typed in TYPED:
        ids = [*prompt_ids(tok, typed), *tok(" She smiled.", add_special_tokens=False)["input_ids"]]
        text = story_text(ids, tok, prompt_span(tok, typed))
        assert text == f"{typed} She smiled.", text


def test_a_written_word_piece_joins_the_text_before_it_and_never_shows_its_marks(shipped_tokenizer):
    tok = shipped_tokenizer
    piece = next(p for p, i in sorted(tok.get_vocab().items()) if p.startswith("##") and p[2:].isalpha())
    ids = [
        *prompt_ids(tok, "猫が好き"),
        tok.convert_tokens_to_ids(piece),
        *tok(" ok", add_special_tokens=False)["input_ids"],
    ]
    assert story_text(ids, tok, prompt_span(tok, "猫が好き")) == f"猫が好き{piece[2:]} ok"
    assert story_text(ids[1:], tok) == f"{piece[2:]} ok"  # the story's first token, no prompt: no "##" either


def test_written_apostrophes_and_quotes_read_as_typed(shipped_tokenizer):
    assert clean_text("It ’ s here , isn ' t it") == "It’s here, isn't it"
    tok = shipped_tokenizer
    said = 'She said, "Come'
    ids = [*prompt_ids(tok, said), *tok(' here ! " Then she left .', add_special_tokens=False)["input_ids"]]
    assert story_text(ids, tok, prompt_span(tok, said)) == 'She said, "Come here!" Then she left.'


def test_a_canvas_reads_each_text_back_as_typed(shipped_tokenizer):
    tok = shipped_tokenizer
    canvas = build_canvas(tok, [Text(TYPED[0]), Blank(3), Text(TYPED[3]), Blank(2), Text(TYPED[1])], 256)
    words = tok(" one two three four five", add_special_tokens=False)["input_ids"]
    ids, fill = list(canvas.ids), iter(words)
    ids = [next(fill) if token == canvas.mask_id else token for token in ids]
    assert canvas.story_text(ids, tok) == f"{TYPED[0]} one two three {TYPED[3]} four five {TYPED[1]}"


def test_a_prompt_with_blanks_is_a_template(shipped_tokenizer):
    assert prompt_template("Once upon a time [___:20] The end.", "Bye.") == [
        Text("Once upon a time "),
        Blank(20),
        Text(" The end."),
        Text("Bye."),
    ]
    assert prompt_template("Once upon a time", None) is None


async def story(client, body: dict) -> tuple[list[str], dict]:
    """The `text` of every step event and the `done` event of a streamed request."""
    async with aconnect_sse(client, "POST", "/generate", json={**body, "stream": True}) as source:
        assert source.response.status_code == 200, await source.response.aread()
        events = [event async for event in source.aiter_sse()]
    assert events[-1].event == "done", events[-1].data
    return [json.loads(e.data)["text"] for e in events if e.event == "step"], json.loads(events[-1].data)


@pytest.mark.anyio
@pytest.mark.parametrize("typed", TYPED)
async def test_the_api_answers_with_the_prompt_ending_and_segments_as_typed(shipped_client, typed):
    body = {"steps": 6, "seed": 1, "temperature": 1.0}
    drafts, done = await story(shipped_client, {**body, "prompt": typed, "length": 40})
    assert done["text"].startswith(typed) and drafts[-1] == done["text"]
    assert all(draft.startswith(typed) for draft in drafts)
    drafts, done = await story(shipped_client, {**body, "prompt": "Once", "ending": typed, "length": 40})
    assert done["text"].endswith(typed) and drafts[-1] == done["text"]
    segments = [{"text": typed}, {"blank": 4}, {"text": typed}, {"blank": 3, "flexible": True}]
    drafts, done = await story(shipped_client, {**body, "segments": segments})
    assert done["text"].startswith(typed) and done["text"].count(typed) == 2 and drafts[-1] == done["text"]
    for text in (done["text"], *drafts):
        assert "##" not in text and "[UNK]" not in text


@pytest.mark.anyio
async def test_the_api_honours_blanks_typed_in_the_prompt(shipped_client, shipped_tokenizer):
    body = {"prompt": "Once upon a time [___:6] Zoë’s end.", "steps": 6, "seed": 2}
    answer = (await shipped_client.post("/generate", json=body)).json()
    canvas = build_canvas(shipped_tokenizer, [Text("Once upon a time"), Blank(6), Text("Zoë’s end.")], 256)
    assert answer["length"] == canvas.length and answer["text"].endswith("Zoë’s end.")
    fixed = {pos: token for pos, token in enumerate(canvas.ids) if token != canvas.mask_id}
    assert "[___" not in answer["text"] and all(
        answer["tokens"][pos] == fixed[pos] for pos in fixed if pos < len(answer["tokens"])
    )
    refused = await shipped_client.post("/generate", json={**body, "length": 40})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "length"]
    assert "segments" in refused.json()["detail"][0]["msg"]


def test_the_cli_prints_the_prompt_and_template_as_typed(shipped_vocab_dir, capsys):
    args = ["generate", "--model", str(shipped_vocab_dir), "--steps", "4", "--seed", "3", "--json"]
    assert main([*args, "--prompt", TYPED[0]]) == 0
    assert json.loads(capsys.readouterr().out)["text"].startswith(TYPED[0])
    assert main([*args, "--template", f"{TYPED[3]} [___:5] {TYPED[1]}"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    assert text.startswith(TYPED[3]) and text.endswith(TYPED[1]) and "##" not in text
    assert main([*args, "--prompt", "Once [___:5] José."]) == 0  # the same blanks as --template
    assert json.loads(capsys.readouterr().out)["text"].endswith("José.")


def test_spans_are_where_the_prompt_lies(cased_tokenizer):
    ids = prompt_ids(cased_tokenizer, " Zoë 🐱 ")
    assert prompt_span(cased_tokenizer, " Zoë 🐱 ") == (FixedSpan(1, len(ids), "Zoë 🐱"),)  # after [CLS]
    assert prompt_span(cased_tokenizer, "  ") == ()


def test_the_terminal_view_draws_the_prompt_as_typed(shipped_tokenizer):
    from app.terminal_view import sequence_text

    tok = shipped_tokenizer
    typed = "Zoë 🐱 said “hi”"
    ids = [*prompt_ids(tok, typed), tok.mask_token_id, tok.mask_token_id]
    drawn = sequence_text(ids, tok, {}, prompt_span(tok, typed)).plain
    assert drawn.strip().startswith(typed) and "UNK" not in drawn


@pytest.mark.anyio
async def test_an_openai_completion_follows_the_prompt_as_typed(shipped_client, shipped_vocab_dir, shipped_tokenizer):
    typed, model = TYPED[3], shipped_vocab_dir.name
    body = {"model": model, "prompt": typed, "max_tokens": 12, "seed": 5}
    choice = (await shipped_client.post("/v1/completions", json=body)).json()["choices"][0]
    length = len(prompt_ids(shipped_tokenizer, typed)) + 12
    same = (await shipped_client.post("/generate", json={"prompt": typed, "length": length, "seed": 5})).json()
    assert typed + choice["text"] == same["text"] and "##" not in choice["text"]
    blank = await shipped_client.post("/v1/completions", json={**body, "prompt": "Once [___:5] end."})
    assert blank.status_code == 400 and blank.json()["error"]["param"] == "prompt"
    assert "POST /generate" in blank.json()["error"]["message"]
