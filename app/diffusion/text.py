"""Between token ids and readable text: prompts in, drafts with visible masks and clean stories out.

What a person typed comes back as typed: the model reads a normalised copy (`typed_text.model_text`),
which may hold [UNK] where its vocabulary has no piece, and a `FixedSpan` keeps the typed text of
those positions, which the story's text shows in place of their tokens. Only what the model wrote
is decoded, and its WordPiece spacing undone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from app.diffusion.typed_text import model_text

MASK_PLACEHOLDER = "░"
CONTINUATION = "##"  # WordPiece's mark of a piece that continues the word before it

_SPACE_BEFORE = re.compile(r"\s+([.,!?;:%)\]}…”’])")
_SPACE_AFTER = re.compile(r"([(\[{$“‘])\s+")
_APOSTROPHE = re.compile(r"(\w) ?(['’]) ?(s|t|d|m|ll|re|ve)\b")
_HYPHEN = re.compile(r"(\w) - (\w)")
_SPACES = re.compile(r"[ \t]{2,}")
_CLOSES = re.compile(r"[.,!?;:%)\]}…”’]|['’](s|t|d|m|ll|re|ve)\b")
_OPENS = ("(", "[", "{", "$", "“", "‘")


@dataclass(frozen=True)
class FixedSpan:
    """Positions [start, end) that hold typed text: the story shows `text` there, not their tokens."""

    start: int
    end: int
    text: str


def _pair_straight_quotes(text: str, quote_open: bool = False) -> str:
    """Attach each straight double quote to its quotation: `" Hi , " she` -> `"Hi," she`."""
    pieces = text.split('"')
    for i in range(1, len(pieces)):
        if (i + quote_open) % 2 == 1:  # the quote before pieces[i] opens
            pieces[i] = pieces[i].lstrip()
        else:  # it closes
            pieces[i - 1] = pieces[i - 1].rstrip()
    return '"'.join(pieces)


def clean_text(text: str, quote_open: bool = False) -> str:
    """Undo the spaces that WordPiece decoding puts around punctuation, quotes and apostrophes;
    `quote_open`: the text before this one left a straight double quote open."""
    text = _pair_straight_quotes(text, quote_open)
    text = _APOSTROPHE.sub(r"\1\2\3", text)
    text = _HYPHEN.sub(r"\1-\2", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()


def _quote_open(text: str) -> bool:
    return text.count('"') % 2 == 1


def _join(before: str, after: str, continues: bool) -> str:
    """`before` and `after` with a space between, unless `after` continues a word, closes or is opened."""
    if not before or not after:
        return before + after
    glued = (
        continues
        or _CLOSES.match(after) is not None
        or before.endswith(_OPENS)
        or (after.startswith('"') and _quote_open(before))
        or (before.endswith('"') and _quote_open(before))
    )
    return before + ("" if glued else " ") + after


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | None) -> list[int]:
    """Token ids that start the sequence for `prompt`, as training encoded a story's beginning.

    The tokenizer's own special tokens are kept at the start (a [CLS] where training had one) and
    dropped at the end (the story goes on after the prompt, so no [SEP] yet). No prompt: no prefix,
    the sequence starts all-masked as in the reference sampler. Typed text is text: "[MASK]" or
    "[PAD]" in a prompt are split like any other word (`split_special_tokens`), never a mask the
    model would fill or an end that cuts the story. The model reads `model_text(prompt)`.
    """
    if not prompt or not prompt.strip():
        return []
    ids = tokenizer(model_text(prompt.strip()), add_special_tokens=True, split_special_tokens=True)["input_ids"]
    closing = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None}
    while ids and ids[-1] in closing:
        ids = ids[:-1]
    return list(ids)


def prompt_span(tokenizer: PreTrainedTokenizerBase, prompt: str | None) -> tuple[FixedSpan, ...]:
    """Where `prompt_ids(prompt)` puts the prompt's text: after its leading special tokens."""
    ids = prompt_ids(tokenizer, prompt)
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # an emoji may be all of a prompt
    lead = next((i for i, token in enumerate(ids) if token not in special), len(ids))
    return (FixedSpan(lead, len(ids), prompt.strip()),) if prompt and lead < len(ids) else ()


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end a story: PAD, SEP and EOS, those the tokenizer has."""
    return {int(t) for t in (tokenizer.pad_token_id, tokenizer.sep_token_id, tokenizer.eos_token_id) if t is not None}


def story_end(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> int:
    """Index of the first PAD / SEP / EOS: where the model says the story ends (len if none)."""
    enders = end_token_ids(tokenizer)
    for i, token in enumerate(ids):
        if token in enders and not (i == 0 and token == tokenizer.bos_token_id):
            return i
    return len(ids)


def without_pad_tail(ids: Sequence[int], pad_id: int | None) -> list[int]:
    """`ids` less the run of PAD that fills the sequence after the story's end."""
    end = len(ids)
    while end and ids[end - 1] == pad_id:
        end -= 1
    return list(ids[:end])


def _written(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, placeholder: str) -> tuple[str, bool]:
    """The WordPiece text of tokens the model wrote, masks as `placeholder`, and whether its first
    piece continues the word before it."""
    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    pieces = tokenizer.convert_ids_to_tokens([t for t in ids if t not in special])
    assert isinstance(pieces, list), "a list of ids converts to a list of tokens"
    if not pieces:
        return "", False
    continues = pieces[0].startswith(CONTINUATION) and len(pieces[0]) > len(CONTINUATION)
    if continues:
        pieces[0] = pieces[0][len(CONTINUATION) :]
    text = tokenizer.convert_tokens_to_string(pieces)
    return text.replace(tokenizer.mask_token, f" {placeholder} "), continues


def story_text(
    ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    fixed: Sequence[FixedSpan] = (),
    placeholder: str = MASK_PLACEHOLDER,
) -> str:
    """The story so far: typed text as typed, written text decoded, each mask as `placeholder`.

    Cut at the first revealed PAD/SEP and without the leading special tokens, so that once no mask
    is left a draft's text is the final story's.
    """
    end = story_end(ids, tokenizer)
    starters = {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None}
    pos = next((i for i, token in enumerate(ids[:end]) if token not in starters), end)
    spans = {span.start: span for span in fixed}
    text, run = "", list[int]()
    while pos < end or run:
        span = spans.get(pos) if pos < end else None
        if run and (span is not None or pos >= end):
            written, continues = _written(run, tokenizer, placeholder)
            text, run = _join(text, clean_text(written, _quote_open(text)), continues), []
        if span is not None:
            text, pos = _join(text, span.text.strip(), False), max(span.end, pos + 1)
        elif pos < end:
            run.append(ids[pos])
            pos += 1
    return text


def decode_story(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, fixed: Sequence[FixedSpan] = ()) -> str:
    """The clean story text: everything before the first PAD/SEP, without special tokens."""
    return story_text(ids, tokenizer, fixed)


def render_draft(
    ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    placeholder: str = MASK_PLACEHOLDER,
    fixed: Sequence[FixedSpan] = (),
) -> str:
    """The story so far with each masked position shown as `placeholder`; equals `decode_story` once
    no mask is left."""
    return story_text(ids, tokenizer, fixed, placeholder)
