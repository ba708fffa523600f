"""From ids to clean stories: prompts, drafts with visible masks, and WordPiece clean-up."""

from __future__ import annotations

import pytest

from app.diffusion.text import MASK_PLACEHOLDER, clean_text, decode_story, prompt_ids, render_draft


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Lily didn ' t go .", "Lily didn't go."),
        ('" Hello , Tom ! " she said . " Can we play ? "', '"Hello, Tom!" she said. "Can we play?"'),
        ("It ' s Sam ' s ball ; ok : yes", "It's Sam's ball; ok: yes"),
        ("a sun - hat ( big )", "a sun-hat (big)"),
        ("I ' m sure they ' re here and we ' ll see", "I'm sure they're here and we'll see"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_decode_round_trips_real_stories(cased_tokenizer):
    from tests.conftest import STORIES_DIR

    stories = STORIES_DIR.joinpath("train.txt").read_text().split("<|endoftext|>")[:40]
    exact = 0
    for story in stories:
        story = " ".join(story.split())
        ids = cased_tokenizer(story)["input_ids"] + [cased_tokenizer.pad_token_id] * 3
        exact += decode_story(ids, cased_tokenizer) == story
    assert exact >= 36, f"only {exact}/40 stories decode back to their exact text"


def test_story_ends_at_first_pad_or_sep(cased_tokenizer):
    tok = cased_tokenizer
    ids = tok("The end.")["input_ids"] + [tok.pad_token_id] + tok("Not this.", add_special_tokens=False)["input_ids"]
    assert decode_story(ids, tok) == "The end."


def test_prompt_keeps_leading_special_and_drops_closing_one(cased_tokenizer):
    ids = prompt_ids(cased_tokenizer, "  Once upon a time ")
    assert ids[0] == cased_tokenizer.cls_token_id
    assert cased_tokenizer.sep_token_id not in ids
    assert prompt_ids(cased_tokenizer, "") == [] and prompt_ids(cased_tokenizer, None) == []


def test_draft_shows_masks_and_equals_story_when_none_left(cased_tokenizer):
    tok = cased_tokenizer
    ids = tok("Tom had a red ball.")["input_ids"] + [tok.pad_token_id] * 2
    masked = list(ids)
    masked[3] = masked[4] = tok.mask_token_id
    draft = render_draft(masked, tok)
    assert draft.count(MASK_PLACEHOLDER) == 2 and draft.startswith("Tom had")
    assert render_draft(ids, tok) == decode_story(ids, tok) == "Tom had a red ball."
