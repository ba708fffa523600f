"""Word statistics of stories: how varied, repetitive and long they are, the same for every benchmark.

A story's words are its lower-case runs of letters, digits and apostrophes (punctuation dropped), so
"Lily," and "lily" are one word; repeated 4-grams count whitespace-separated tokens, so a loop that
repeats punctuation too is caught.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

SHORT_WORDS = 60
"""A story under this many words counts as short (real TinyStories rarely are)."""

_WORD = re.compile(r"[a-z0-9']+")


def story_words(text: str) -> list[str]:
    """A story's words, lower case, punctuation dropped."""
    return _WORD.findall(text.lower())


def entropy_bits(words: Iterable[str]) -> float:
    """Entropy in bits of the unigram distribution of `words` (0 for none)."""
    counts = Counter(words)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def word_entropy(text: str) -> float:
    """Entropy in bits of the distribution of one story's words: word choice within a story."""
    return entropy_bits(story_words(text))


def pooled_word_entropy(texts: Sequence[str]) -> float:
    """Entropy in bits of the distribution of all the stories' words together: vocabulary of a setting."""
    return entropy_bits(w for text in texts for w in story_words(text))


def story_distinct_2(text: str) -> float:
    """Distinct word bigrams over all bigrams of one story."""
    grams = list(pairwise(story_words(text)))
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_2(texts: Sequence[str]) -> float:
    """Distinct whitespace-token bigrams over all bigrams of `texts` (Li et al. 2016's distinct-2)."""
    grams = [gram for words in (t.split() for t in texts) for gram in pairwise(words)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_4grams(text: str) -> float:
    """Share of whitespace-token 4-grams that already occurred earlier in the same text."""
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def word_counts(texts: Sequence[str]) -> list[int]:
    """Whitespace-separated words per story (what a reader counts)."""
    return [len(t.split()) for t in texts]


def story_statistics(texts: Sequence[str]) -> dict[str, Any]:
    """Every word statistic of a set of stories, each a mean over the stories unless named pooled."""
    if not texts:
        raise ValueError("no stories to measure")
    words = word_counts(texts)
    quartiles = statistics.quantiles(words, n=4) if len(words) > 1 else [float(words[0])] * 3
    return {
        "stories": len(texts),
        "word_entropy_pooled": pooled_word_entropy(texts),
        "word_entropy": statistics.fmean(map(word_entropy, texts)),
        "distinct2_story": statistics.fmean(map(story_distinct_2, texts)),
        "distinct2": distinct_2(texts),
        "rep4": statistics.fmean(map(repeated_4grams, texts)),
        "words": statistics.fmean(words),
        "words_quartiles": list(quartiles),
        "short": sum(w < SHORT_WORDS for w in words) / len(words),
    }
