"""What the model reads of typed text: accents and typographic punctuation its vocabulary may lack.

A WordPiece vocabulary trained on plain-ASCII stories reads "Zoë", "café" or "It’s" as [UNK] or as
pieces it rarely saw. The model is shown a normalised copy instead (NFKC, typographic quotes, dashes
and spaces as ASCII, accents stripped from letters that have an ASCII base); the answer still carries
the text exactly as typed (`text.FixedSpan`). Characters with no ASCII form (emoji, CJK) are left as
they are: the tokenizer reads them as it can, [UNK] at worst, and the answer still shows them.
"""

from __future__ import annotations

import unicodedata

TYPOGRAPHIC = str.maketrans(
    {
        **dict.fromkeys("‘’‚‛′", "'"),
        **dict.fromkeys("“”„‟″«»", '"'),
        **dict.fromkeys("‐‑‒–—―−", "-"),
        **dict.fromkeys("\u00a0\u2007\u202f", " "),
    }
)
"""Typographic punctuation as the ASCII a story corpus mostly spells it with (phones type ’ for ')."""


def _plain_letter(char: str) -> str:
    """`char` without its accents when that leaves ASCII ("ë" -> "e"), else `char` ("が", "ø", "🐱")."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return stripped if stripped.isascii() else char


def model_text(text: str) -> str:
    """`text` as the model conditions on it: NFKC ("…" -> "...", "ﬁ" -> "fi"), ASCII punctuation, no accents."""
    text = unicodedata.normalize("NFKC", text).translate(TYPOGRAPHIC)
    return "".join(_plain_letter(char) for char in text)
