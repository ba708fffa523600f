"""Stories scored by the judge: generation perplexity per judge token, beside their word statistics.

`score_texts` is what benchmarks call; `compare` also scores the real stories in the same run, so a
setting is read as a ratio to them (1.0: as plausible as real stories to this judge).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from model_training.judge.model import Judge, normalize
from model_training.judge.story_stats import story_statistics

SCORE_BATCH = 16


@dataclass(frozen=True)
class Surprise:
    """Summed negative log-likelihood (nats) of a set of stories and the judge tokens it covers."""

    nats: float
    tokens: int
    truncated: int  # stories longer than the judge's context, scored on their start

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats / self.tokens) if self.tokens else math.nan


def encode(judge: Judge, texts: Sequence[str]) -> tuple[list[list[int]], int]:
    """Each story as judge ids after a leading end token, cut to the context; and how many were cut."""
    rows = [[judge.end_id, *enc.ids] for enc in judge.tokenizer.encode_batch([normalize(t) for t in texts])]
    return [row[: judge.context] for row in rows], sum(len(row) > judge.context for row in rows)


@torch.no_grad()
def surprise(judge: Judge, texts: Sequence[str], batch_size: int = SCORE_BATCH) -> Surprise:
    """The judge's NLL of every story token given the tokens before it (the leading end token is given)."""
    rows, truncated = encode(judge, texts)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch: less padding
    nats, tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([r + [judge.end_id] * (width - len(r)) for r in batch])  # (B, L)
        real = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])  # (B, L)
        logits = judge.model(input_ids=ids, attention_mask=real).logits.float()  # (B, L, V)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, L-1)
        nats += float((nll * real[:, 1:]).sum())
        tokens += int(real[:, 1:].sum())
    return Surprise(nats, tokens, truncated)


def shuffled_words(text: str, seed: int) -> str:
    """`text` with its words in a seeded random order: the same words, no story (a control for a judge)."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def score_texts(texts: Sequence[str], judge: Judge) -> dict[str, Any]:
    """Generation perplexity under `judge` (per judge token, pooled over the stories) and word statistics."""
    result = surprise(judge, texts)
    return {
        "judge_ppl": result.perplexity,
        "judge_tokens": result.tokens,
        "judge_truncated": result.truncated,
        **story_statistics(texts),
    }


def relative_to(scores: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """`scores` with their ratios to the reference stories' (perplexity, entropy, words)."""
    ratios = {f"{key}_ratio": scores[key] / reference[key] for key in ("judge_ppl", "word_entropy_pooled", "words")}
    return scores | ratios


def compare(named: Mapping[str, Sequence[str]], reference: Sequence[str], judge: Judge) -> dict[str, dict[str, Any]]:
    """Scores of the reference stories and of each named set, the sets with ratios to the reference."""
    real = score_texts(reference, judge)
    return {"reference": real} | {name: relative_to(score_texts(texts, judge), real) for name, texts in named.items()}
