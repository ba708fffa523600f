"""A completion's text from a masked-diffusion draft: what can be streamed as deltas, and where it ends.

An autoregressive stream sends each token once it is written; a diffusion model writes everywhere at
once and a draft's text is not final. What is final: a revealed token never changes, so every token
left of the leftmost masked position is fixed, and the text they decode to is the *stable prefix*.
Its last word is held back too, because the next token can still continue that word (WordPiece's
`##`) or glue to it ("dog" + "'s"). On the 1,899 lines of tests/data/tinystories/train.txt, each cut
after every token (65,884 prefixes with the cased test tokenizer, 61,406 with the shipped model's),
the text of every prefix less its last word is a prefix of the final text; whole, 629 of them (1%)
are not. tests/test_openai.py checks it on drafts revealed in random orders. So a standard stream's
chunks carry only newly stable text, and add up to the final text. With blocks (`block_length`) the
stable prefix grows block by block; with random remasking it mostly arrives near the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from app.api.openai.protocol import FinishReason
from app.diffusion.text import FixedSpan, decode_story, render_draft, story_end


def completion_of(text: str, prompt_text: str) -> str:
    """`text` after the prompt's text, so that prompt + completion reads as the story."""
    if text.startswith(prompt_text):
        return text[len(prompt_text) :]
    shared = next(
        (i for i, (a, b) in enumerate(zip(text, prompt_text, strict=False)) if a != b), min(len(text), len(prompt_text))
    )
    return text[shared:]  # the prompt's last word merged with the story's next token


def stable_text(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, typed: Sequence[FixedSpan] = ()) -> str:
    """The text no later step of a draft can change: the tokens left of the leftmost mask, less the last
    word unless those tokens already end the story."""
    mask_id = tokenizer.mask_token_id
    fixed = list(ids[: ids.index(mask_id)] if mask_id in ids else ids)
    text = decode_story(fixed, tokenizer, typed)
    if len(fixed) == len(ids) or story_end(fixed, tokenizer) < len(fixed):
        return text  # no mask left, or the story ends within the fixed tokens: this is the final text
    cut = text.rfind(" ")
    return text[:cut] if cut >= 0 else ""


def stop_index(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string in `text` starts; None if none occurs."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def without_stop_start(text: str, stops: Sequence[str]) -> str:
    """`text` less its longest end that begins a stop string: text that may still turn into a stop."""
    for start in range(max(0, len(text) - max(map(len, stops), default=0) + 1), len(text)):
        if any(stop.startswith(text[start:]) for stop in stops):
            return text[:start]
    return text


def finish_reason(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> FinishReason:
    """stop: the model ended the story before the last position; length: it used every position."""
    return "stop" if story_end(ids, tokenizer) < len(ids) else "length"


@dataclass
class CompletionText:
    """One choice's text while its story denoises: the deltas a stream may send, and the final text."""

    tokenizer: PreTrainedTokenizerBase
    prompt_text: str
    stops: Sequence[str]
    typed: Sequence[FixedSpan] = ()  # where the prompt lies, read back as typed
    sent: str = ""
    stopped: bool = field(default=False, init=False)

    def delta(self, ids: Sequence[int]) -> str:
        """Text that became final since the last delta; sets `stopped` when a stop string is in it."""
        stable = completion_of(stable_text(ids, self.tokenizer, self.typed), self.prompt_text)
        return self._advance(stable, final=False)

    def final(self, ids: Sequence[int]) -> tuple[str, FinishReason]:
        """The rest of the final text, and why it ended."""
        text = completion_of(decode_story(ids, self.tokenizer, self.typed), self.prompt_text)
        delta = self._advance(text, final=True)
        return delta, "stop" if self.stopped else finish_reason(ids, self.tokenizer)

    def draft(self, ids: Sequence[int]) -> str:
        """The whole draft after the prompt, masks as the placeholder (the `diffusing` view)."""
        return completion_of(render_draft(ids, self.tokenizer, fixed=self.typed), self.prompt_text)

    def _advance(self, text: str, final: bool) -> str:
        """Move `sent` on to `text` (cut at a stop string; short of a stop's possible start unless final)."""
        if self.stopped or not text.startswith(self.sent):
            return ""  # stopped, or (never seen on the sample stories) the sent text is not a prefix: no fix
        stop = stop_index(text, self.stops)  # never inside `sent`: a stop's start is held back until known
        if stop is not None:
            text, self.stopped = text[:stop], True
        elif not final:
            text = without_stop_start(text, self.stops)
        delta, self.sent = text[len(self.sent) :], text
        return delta
