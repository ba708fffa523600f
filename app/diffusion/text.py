"""Between token ids and readable text: prompts in, drafts with visible masks and clean stories out."""

from __future__ import annotations

import re
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

MASK_PLACEHOLDER = "░"

_SPACE_BEFORE = re.compile(r"\s+([.,!?;:%)\]}…])")
_SPACE_AFTER = re.compile(r"([(\[{$])\s+")
_APOSTROPHE = re.compile(r"(\w) ?' ?(s|t|d|m|ll|re|ve)\b")
_HYPHEN = re.compile(r"(\w) - (\w)")
_SPACES = re.compile(r"[ \t]{2,}")


def _pair_straight_quotes(text: str) -> str:
    """Attach each straight double quote to its quotation: `" Hi , " she` -> `"Hi," she`."""
    pieces = text.split('"')
    for i in range(1, len(pieces)):
        if i % 2 == 1:  # the quote before pieces[i] opens
            pieces[i] = pieces[i].lstrip()
        else:  # it closes
            pieces[i - 1] = pieces[i - 1].rstrip()
    return '"'.join(pieces)


def clean_text(text: str) -> str:
    """Undo the spaces that WordPiece decoding puts around punctuation, quotes and apostrophes."""
    text = _pair_straight_quotes(text)
    text = text.replace("“ ", "“").replace(" ”", "”")
    text = _APOSTROPHE.sub(r"\1'\2", text)
    text = _HYPHEN.sub(r"\1-\2", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | None) -> list[int]:
    """Token ids that start the sequence for `prompt`, as training encoded a story's beginning.

    The tokenizer's own special tokens are kept at the start (a [CLS] where training had one) and
    dropped at the end (the story goes on after the prompt, so no [SEP] yet). No prompt: no prefix,
    the sequence starts all-masked as in the reference sampler. Typed text is text: "[MASK]" or
    "[PAD]" in a prompt are split like any other word (`split_special_tokens`), never a mask the
    model would fill or an end that cuts the story.
    """
    if not prompt or not prompt.strip():
        return []
    ids = tokenizer(prompt.strip(), add_special_tokens=True, split_special_tokens=True)["input_ids"]
    closing = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None}
    while ids and ids[-1] in closing:
        ids = ids[:-1]
    return list(ids)


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


def _story_tokens(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = list(ids[: story_end(ids, tokenizer)])
    starters = {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None}
    while ids and ids[0] in starters:
        ids = ids[1:]
    return ids


def decode_story(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """The clean story text: everything before the first PAD/SEP, without special tokens."""
    text = tokenizer.decode(_story_tokens(ids, tokenizer), skip_special_tokens=True)
    assert isinstance(text, str), "one sequence decodes to one string"
    return clean_text(text)


def render_draft(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, placeholder: str = MASK_PLACEHOLDER) -> str:
    """The story so far with each masked position shown as `placeholder`.

    Cut at the first revealed PAD/SEP exactly like `decode_story`, so that once no mask is left
    the draft equals the final story.
    """
    mask_id = tokenizer.mask_token_id
    tokens = _story_tokens(ids, tokenizer)
    special = set(tokenizer.all_special_ids) - {mask_id}
    pieces = tokenizer.convert_ids_to_tokens([t for t in tokens if t not in special])
    assert isinstance(pieces, list), "a list of ids converts to a list of tokens"
    text = tokenizer.convert_tokens_to_string(pieces)
    return clean_text(text.replace(tokenizer.mask_token, f" {placeholder} "))
