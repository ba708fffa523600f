"""Stories written around fixed text: a canvas of texts and blanks as the sampler's prefix, pinned tokens
and length, and the story text read back from it.

A masked diffusion model fills any masked position from context on both sides, so a story can start,
end or pause anywhere the user likes. The canvas is laid out as training encodes a story
(`model_training.tokenization.encode_batch`): the tokenizer's leading special tokens ([CLS] for BERT,
none for the shipped model), the story, then its end: the tokenizer's closing tokens ([SEP]) or, for a
tokenizer that adds none, one [PAD] (training pads every story, and the first PAD ends it).

- A text is pinned: encoded with `split_special_tokens`, so typed "[MASK]" or "[SEP]" stays words. The
  model reads it normalised (`typed_text.model_text`); the story's text shows it as typed (`texts`).
- A blank is masked positions. Between texts it is filled with words under every `endings` rule: the
  sampler writes an end token only after a row's last word and its fixed text (`may_end` in
  app/diffusion/story_length.py), so a story is one contiguous text (benchmarks/infill_quality.py
  counts end tokens in blanks; `Canvas.visible` would drop one from the text read back).
- A canvas that ends with a text, or with a fixed blank, gets the story's end pinned after it: the
  story ends exactly there, as in training. A flexible blank may only come last: no end is pinned, and
  the model ends the story inside it where it likes (its end token and the PAD after it are no text).
- An edit is a finished story's tokens with some spans masked again; everything else stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from transformers import PreTrainedTokenizerBase

from app.diffusion.sampling import Pinned
from app.diffusion.template import BLANK_SYNTAX as BLANK_SYNTAX  # re-exported: a canvas's words
from app.diffusion.template import Blank as Blank
from app.diffusion.template import Segment as Segment
from app.diffusion.template import Text as Text
from app.diffusion.template import parse_template as parse_template
from app.diffusion.template import prompt_template as prompt_template
from app.diffusion.text import MASK_PLACEHOLDER, FixedSpan, end_token_ids, story_text
from app.diffusion.typed_text import model_text


class CanvasError(ValueError):
    """A canvas the model cannot write; the message says why and is safe to show to the client."""


@dataclass(frozen=True)
class Canvas:
    """The sequence before the first step: fixed tokens, and `mask_id` at every position to fill."""

    ids: tuple[int, ...]
    mask_id: int
    texts: tuple[FixedSpan, ...] = ()  # where each typed text lies, to show it as typed

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def prefix(self) -> tuple[int, ...]:
        """The fixed tokens before the first blank."""
        first = self.ids.index(self.mask_id) if self.mask_id in self.ids else len(self.ids)
        return self.ids[:first]

    @property
    def pinned(self) -> Pinned:
        """Every fixed token after the prefix, as (position, token id)."""
        start = len(self.prefix)
        return tuple((pos, token) for pos, token in enumerate(self.ids) if pos >= start and token != self.mask_id)

    @property
    def blanks(self) -> list[tuple[int, int]]:
        """The [start, end) runs of positions to fill, in order."""
        runs: list[tuple[int, int]] = []
        for pos, token in enumerate(self.ids):
            if token != self.mask_id:
                continue
            if runs and runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], pos + 1)
            else:
                runs.append((pos, pos + 1))
        return runs

    def _hidden(self, ids: Sequence[int], end_ids: set[int]) -> set[int]:
        """Positions of the end tokens written in a blank that fixed story text follows: they cannot be
        read, and left in they would cut the story (`text.story_end`) before its fixed text."""
        words = [pos for pos, token in enumerate(self.ids) if token != self.mask_id and token not in end_ids]
        last_word = max(words, default=-1)
        return {
            pos
            for pos, token in enumerate(ids)
            if pos < last_word and self.ids[pos] == self.mask_id and token in end_ids
        }

    def visible(self, ids: Sequence[int], end_ids: set[int]) -> list[int]:
        """`ids` without the end tokens written in a blank that fixed story text follows."""
        hidden = self._hidden(ids, end_ids)
        return [token for pos, token in enumerate(ids) if pos not in hidden]

    def story_text(
        self, ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, placeholder: str = MASK_PLACEHOLDER
    ) -> str:
        """The story written on this canvas (or its draft): each typed text as typed, the blanks decoded."""
        hidden = sorted(self._hidden(ids, end_token_ids(tokenizer)))

        def shifted(pos: int) -> int:
            return pos - sum(1 for h in hidden if h < pos)

        texts = [FixedSpan(shifted(span.start), shifted(span.end), span.text) for span in self.texts]
        return story_text(self.visible(ids, end_token_ids(tokenizer)), tokenizer, texts, placeholder)


def story_marks(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(lead, end): the tokens training puts before a story, and those that end it."""
    ids = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    special = set(tokenizer.all_special_ids)
    lead = 0
    while lead < len(ids) and ids[lead] in special:
        lead += 1
    close = len(ids)
    while close > lead and ids[close - 1] in special:
        close -= 1
    end = ids[close:] or ([] if tokenizer.pad_token_id is None else [int(tokenizer.pad_token_id)])
    return ids[:lead], end


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Typed text as the token ids the model reads, without special tokens: "[MASK]" in it is split
    like any other word, "Zoë" read as "Zoe" (`model_text`)."""
    text = model_text(text.strip())
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def build_canvas(
    tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment], max_length: int, length: int | None = None
) -> Canvas:
    """The canvas of `segments`, laid out as training lays out a story; `length` sizes a Blank(None)."""
    mask_id = int(tokenizer.mask_token_id)
    lead, end = story_marks(tokenizer)
    if not any(isinstance(segment, Blank) for segment in segments):
        raise CanvasError("nothing to write: add a blank")
    ids: list[int] = list(lead)
    texts: list[FixedSpan] = []
    rest_at: int | None = None
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if isinstance(segment, Text):
            tokens = encode_text(tokenizer, segment.text)
            if not tokens:
                raise CanvasError(f"segment {i} is empty text: write something or leave it out")
            texts.append(FixedSpan(len(ids), len(ids) + len(tokens), segment.text.strip()))
            ids += tokens
        elif segment.flexible and not last:
            raise CanvasError(
                f"segment {i}: only the last blank can be flexible: the model ends a story with end tokens at its "
                "end, so a story cannot end between two texts"
            )
        elif segment.size is None:
            if rest_at is not None:
                raise CanvasError("at most one blank may take the rest of the length")
            rest_at = len(ids)
        else:
            if segment.size < 1:
                raise CanvasError(f"segment {i} is a blank of {segment.size} tokens: give it at least 1")
            ids += [mask_id] * segment.size
    if not (isinstance(segments[-1], Blank) and segments[-1].flexible):
        ids += end
    if rest_at is not None:
        if length is None:
            raise CanvasError("a blank that takes the rest needs a length")
        if length - len(ids) < 1:
            longer = f" or ask for a longer length (up to {max_length})" if length < max_length else ""
            raise CanvasError(
                f"the fixed text takes {len(ids)} tokens, which leaves no blank in a length of {length}; "
                f"shorten it{longer}"
            )
        rest = length - len(ids)
        ids[rest_at:rest_at] = [mask_id] * rest
        texts = [FixedSpan(s.start + rest, s.end + rest, s.text) if s.start >= rest_at else s for s in texts]
    if len(ids) > max_length:
        raise CanvasError(f"the story takes {len(ids)} tokens, more than the model's {max_length} positions")
    return Canvas(tuple(ids), mask_id, tuple(texts))


def ending_canvas(
    tokenizer: PreTrainedTokenizerBase, prompt: str | None, ending: str, length: int, max_length: int
) -> Canvas:
    """`prompt`, a blank, and `ending` closing the story at position `length`: the blank takes the rest."""
    if not ending.strip():
        raise CanvasError("the ending is empty: write the story's last words, or leave it out")
    beginning: list[Segment] = [Text(prompt)] if prompt and prompt.strip() else []
    return build_canvas(tokenizer, [*beginning, Blank(None), Text(ending)], max_length, length)


def edit_canvas(
    tokens: Sequence[int], spans: Sequence[tuple[int, int]], mask_id: int, vocab_size: int, max_length: int
) -> Canvas:
    """A finished story's `tokens` with the [start, end) `spans` masked again, to be written anew."""
    if not tokens:
        raise CanvasError("no tokens: give a finished story's `tokens`")
    if len(tokens) > max_length:
        raise CanvasError(f"the story takes {len(tokens)} tokens, more than the model's {max_length} positions")
    for pos, token in enumerate(tokens):
        if token == mask_id:
            raise CanvasError(f"position {pos} holds the mask token: give a finished story's tokens")
        if not 0 <= token < vocab_size:
            raise CanvasError(f"position {pos} holds {token}, not a token of this model (0..{vocab_size - 1})")
    if not spans:
        raise CanvasError("no spans: name at least one [start, end) span to rewrite")
    ordered = sorted(spans)
    for start, end in ordered:
        if not 0 <= start < end <= len(tokens):
            raise CanvasError(f"span [{start}, {end}) is not a non-empty span of the {len(tokens)} tokens")
    for (a, b), (c, d) in pairwise(ordered):
        if c < b:
            raise CanvasError(f"spans [{a}, {b}) and [{c}, {d}) overlap")
    ids = list(tokens)
    for start, end in ordered:
        ids[start:end] = [mask_id] * (end - start)
    return Canvas(tuple(ids), mask_id)
