"""Canvases of fixed text and blanks, without a model: layout, validation, templates, and the text read back."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from app.diffusion.canvas import (
    Blank,
    CanvasError,
    Text,
    build_canvas,
    edit_canvas,
    encode_text,
    ending_canvas,
    parse_template,
    story_marks,
)
from app.diffusion.text import decode_story, end_token_ids
from app.paths import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def shipped_tokenizer():
    """The shipped model's WordPiece: no [CLS]/[SEP] around a story, the first PAD ends it."""
    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))


def test_story_marks_follow_how_training_encodes_a_story(cased_tokenizer, shipped_tokenizer):
    assert story_marks(cased_tokenizer) == ([cased_tokenizer.cls_token_id], [cased_tokenizer.sep_token_id])
    assert story_marks(shipped_tokenizer) == ([], [shipped_tokenizer.pad_token_id])


def test_texts_are_pinned_blanks_masked_and_the_story_ends_after_the_last_text(cased_tokenizer):
    tok = cased_tokenizer
    canvas = build_canvas(tok, [Text("Once upon a time"), Blank(5), Text("They were friends forever.")], 64)
    start, end = encode_text(tok, "Once upon a time"), encode_text(tok, "They were friends forever.")
    assert canvas.ids == (tok.cls_token_id, *start, *[tok.mask_token_id] * 5, *end, tok.sep_token_id)
    assert canvas.prefix == (tok.cls_token_id, *start)
    assert canvas.blanks == [(1 + len(start), 6 + len(start))]
    assert dict(canvas.pinned) == {pos: t for pos, t in enumerate(canvas.ids) if pos >= 6 + len(start)}
    assert canvas.length == len(canvas.ids)


def test_a_canvas_may_start_with_a_blank_and_hold_several(shipped_tokenizer):
    tok = shipped_tokenizer
    canvas = build_canvas(tok, [Blank(3), Text("the fox"), Blank(2), Text("The end.")], 256)
    assert canvas.prefix == () and canvas.blanks[0] == (0, 3) and len(canvas.blanks) == 2
    assert canvas.ids[-1] == tok.pad_token_id  # no [SEP] in this vocabulary: one PAD ends the story


def test_typed_special_tokens_stay_text(cased_tokenizer):
    canvas = build_canvas(cased_tokenizer, [Text("a [MASK] and a [SEP] and [PAD]"), Blank(2)], 64)
    fixed = [t for t in canvas.ids[1:] if t != cased_tokenizer.mask_token_id]
    assert not set(fixed[:-1]) & set(cased_tokenizer.all_special_ids)
    assert canvas.blanks == [(len(canvas.ids) - 3, len(canvas.ids) - 1)]  # only the real blank is masked


def test_a_flexible_last_blank_leaves_the_end_to_the_model(cased_tokenizer):
    fixed = build_canvas(cased_tokenizer, [Text("Once"), Blank(4)], 64)
    flexible = build_canvas(cased_tokenizer, [Text("Once"), Blank(4, flexible=True)], 64)
    assert fixed.ids[-1] == cased_tokenizer.sep_token_id and fixed.length == 7
    assert flexible.ids[-1] == cased_tokenizer.mask_token_id and flexible.length == 6


def test_an_ending_closes_the_story_at_the_length(cased_tokenizer):
    canvas = ending_canvas(cased_tokenizer, "Once upon a time", "The end.", 30, 64)
    ending = encode_text(cased_tokenizer, "The end.")
    assert canvas.length == 30
    assert list(canvas.ids[-len(ending) - 1 :]) == [*ending, cased_tokenizer.sep_token_id]
    assert canvas.blanks == [(5, 30 - len(ending) - 1)]  # [CLS] and 4 prompt tokens before it
    no_prompt = ending_canvas(cased_tokenizer, None, "The end.", 30, 64)
    assert no_prompt.prefix == (cased_tokenizer.cls_token_id,) and no_prompt.blanks == [(1, 30 - len(ending) - 1)]


@pytest.mark.parametrize(
    ("segments", "reason"),
    [
        ([Text("only text")], "add a blank"),
        ([], "add a blank"),
        ([Text("a"), Blank(0)], "at least 1"),
        ([Text("  "), Blank(2)], "empty text"),
        ([Blank(2, flexible=True), Text("end")], "only the last blank can be flexible"),
        ([Text("a"), Blank(70)], "more than the model's 64 positions"),
    ],
)
def test_canvases_the_model_cannot_write_say_why(cased_tokenizer, segments, reason):
    with pytest.raises(CanvasError, match=reason):
        build_canvas(cased_tokenizer, segments, 64)


def test_an_ending_that_leaves_no_blank_says_why(cased_tokenizer):
    with pytest.raises(CanvasError, match="leaves no blank in a length of 6"):
        ending_canvas(cased_tokenizer, "Once upon a time", "The end.", 6, 64)
    with pytest.raises(CanvasError, match="the ending is empty"):
        ending_canvas(cased_tokenizer, "Once upon a time", "  ", 30, 64)


def test_an_edit_masks_only_its_spans(cased_tokenizer):
    mask = cased_tokenizer.mask_token_id
    tokens = list(range(1000, 1020))
    canvas = edit_canvas(tokens, [(12, 15), (3, 5)], mask, len(cased_tokenizer), 64)
    assert canvas.blanks == [(3, 5), (12, 15)]
    assert all(canvas.ids[p] == tokens[p] for p in range(20) if not (3 <= p < 5 or 12 <= p < 15))
    assert canvas.prefix == tuple(tokens[:3])


@pytest.mark.parametrize(
    ("tokens", "spans", "reason"),
    [
        ([], [(0, 1)], "no tokens"),
        ([5, 6, 7], [], "no spans"),
        ([5, 6, 7], [(2, 2)], "not a non-empty span"),
        ([5, 6, 7], [(1, 4)], "not a non-empty span"),
        ([5, 6, 7, 8], [(0, 2), (1, 3)], "overlap"),
        ([5, 103, 7], [(0, 1)], "mask token"),
        ([5, 10**6, 7], [(0, 1)], "not a token of this model"),
        (list(range(200, 300)), [(0, 1)], "more than the model's 64 positions"),
    ],
)
def test_edits_the_model_cannot_write_say_why(cased_tokenizer, tokens, spans, reason):
    with pytest.raises(CanvasError, match=reason):
        edit_canvas(tokens, spans, cased_tokenizer.mask_token_id, len(cased_tokenizer), 64)


def test_end_tokens_written_between_texts_are_no_text_but_a_last_blank_may_end_the_story(cased_tokenizer):
    tok = cased_tokenizer
    ends = end_token_ids(tok)
    canvas = build_canvas(tok, [Text("Once upon a time"), Blank(3), Text("the end")], 64)
    ((start, _),) = canvas.blanks
    ids = list(canvas.ids)
    ids[start : start + 3] = [encode_text(tok, "a")[0], tok.pad_token_id, tok.sep_token_id]
    assert decode_story(canvas.visible(ids, ends), tok) == "Once upon a time a the end"
    assert decode_story(ids, tok) == "Once upon a time a"  # what reading it as one story would have cut

    open_end = build_canvas(tok, [Text("Once upon a time"), Blank(3, flexible=True)], 64)
    ids = list(open_end.ids)
    ids[-3:] = [encode_text(tok, "there")[0], tok.sep_token_id, tok.pad_token_id]
    assert decode_story(open_end.visible(ids, ends), tok) == "Once upon a time there"


def test_templates_read_blanks_between_texts():
    assert parse_template("Once upon a time [___:40] The end.") == [
        Text("Once upon a time "),
        Blank(40),
        Text(" The end."),
    ]
    assert parse_template("[_:3]middle[___:~12]") == [Blank(3), Text("middle"), Blank(12, flexible=True)]
    assert parse_template("no blanks [here]") == [Text("no blanks [here]")]
