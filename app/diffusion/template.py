"""A story as fixed texts and blanks, and the `[___:N]` syntax that writes one as a single string.

Import-light (no torch, no tokenizer): `storydiff generate` checks a template before it loads a model,
and the API, the page and the CLI read a prompt's blanks by the same rule (`prompt_template`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """Fixed text, kept exactly."""

    text: str


@dataclass(frozen=True)
class Blank:
    """`size` positions for the model to fill; None: whatever `length` leaves (one blank at most)."""

    size: int | None
    flexible: bool = False  # last segment only: the story may end inside it


Segment = Text | Blank

BLANK_SYNTAX = re.compile(r"\[_+:(~?)(\d+)\]")
"""A blank in a template: `[___:40]` is 40 tokens, `[___:~40]` at most 40 (flexible, last only)."""


def parse_template(template: str) -> list[Segment]:
    """`"Once upon a time [___:40] The end."` as segments: texts between `[___:N]` blanks."""
    segments: list[Segment] = []
    at = 0
    for match in BLANK_SYNTAX.finditer(template):
        if template[at : match.start()].strip():
            segments.append(Text(template[at : match.start()]))
        segments.append(Blank(int(match.group(2)), flexible=bool(match.group(1))))
        at = match.end()
    if template[at:].strip():
        segments.append(Text(template[at:]))
    return segments


def prompt_template(prompt: str | None, ending: str | None = None) -> list[Segment] | None:
    """A prompt that holds `[___:N]` blanks read as the whole story, as the page and `generate` read it
    (an ending, if any, closes it); None for a prompt without blanks."""
    if not prompt or not BLANK_SYNTAX.search(prompt):
        return None
    segments = parse_template(prompt)
    return [*segments, Text(ending)] if ending and ending.strip() else segments
