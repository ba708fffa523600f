"""Constructed logits over a tiny vocabulary, and a model that answers them, to test decoding rules."""

from __future__ import annotations

import math

import torch

from app.diffusion.story_length import EndTokens

PAD, MASK, WORD, VOCAB = 0, 1, 5, 8
ENDS = EndTokens.build([PAD], PAD)
"""PAD ends a story and fills its tail."""


def peaked_logits(top: list[int], p: list[float]) -> torch.Tensor:
    """(L, VOCAB) logits whose distribution at position i puts p[i] on token top[i] and spreads the
    rest evenly over the other tokens but the mask (which the sampler never chooses)."""
    others = VOCAB - 2
    logits = torch.empty(len(p), VOCAB)
    for i, (token, mass) in enumerate(zip(top, p, strict=True)):
        logits[i] = math.log((1 - mass) / others)
        logits[i, token] = math.log(mass)
    return logits


def fixed_model(logits: torch.Tensor):
    """A logits function that answers `logits` (L, V) at every queried position, whatever x holds."""

    def logits_fn(x, query):
        return logits[query.nonzero(as_tuple=True)[1]]

    return logits_fn
