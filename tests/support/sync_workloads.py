"""The grid of running batches whose host syncs the tests bound and `benchmarks/host_syncs.py` prints.

Every remasking x every endings rule x blocks on/off x a canvas (a prompt, pinned segments, an edit:
fixed text all around one blank), and every remasking x endings rule with revision sampling, each over a
batch of three rows of different lengths, streaming and not, run through `RunningBatch.advance` until
every row is done.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pydantic
import torch

from app.diffusion.sampler_settings import Endings, Remasking, SamplerSettings
from app.engine.batch import NewRow, RunningBatch
from app.engine.forward_plan import BatchForward
from tests.support.host_syncs import count_host_syncs

CANVASES = ("prompt", "segments", "edit")


@dataclass(frozen=True)
class Config:
    settings: SamplerSettings
    canvas: str

    @property
    def label(self) -> str:
        s = self.settings
        blocks = f"blocks {s.block_length}" if s.block_length else "no blocks"
        revising = f" revision {s.revision}" if s.revision else ""
        return f"{s.remasking.value:14} {s.endings.value:12} {blocks:10} {self.canvas}{revising}"


def grid(steps: int = 6, block_length: int = 8) -> Iterator[Config]:
    """Every valid (remasking, endings, blocks, canvas) at temperature 0.8 / top-p 0.9, then every
    (remasking, endings) revising (revision sampling) on a canvas of pinned segments."""
    for remasking, endings, blocks, canvas in itertools.product(Remasking, Endings, (None, block_length), CANVASES):
        try:
            settings = SamplerSettings(
                steps=steps, remasking=remasking, endings=endings, block_length=blocks, temperature=0.8, top_p=0.9
            )
        except pydantic.ValidationError:
            continue  # blocks with random remasking
        yield Config(settings, canvas)
    for remasking, endings in itertools.product(Remasking, Endings):
        settings = SamplerSettings(
            steps=steps, remasking=remasking, endings=endings, temperature=0.8, top_p=0.9, revision=0.3
        )
        yield Config(settings, "segments")


def canvas_rows(config: Config, words: Sequence[int], lengths: Sequence[int]) -> list[NewRow]:
    """One row per length, with the config's canvas built from `words`; every other row streams."""
    rows = []
    for seed, length in enumerate(lengths):
        prefix = tuple(words[:3])
        pinned: tuple[tuple[int, int], ...] = ()
        if config.canvas == "segments":
            middle = length // 2
            pinned = ((middle, words[3]), (middle + 1, words[4]))
        elif config.canvas == "edit":
            hole = range(length // 3, length // 3 + 4)
            pinned = tuple((p, words[p % len(words)]) for p in range(len(prefix), length) if p not in hole)
        rows.append(NewRow(prefix, length, config.settings, seed, 1 if seed % 2 == 0 else None, pinned))
    return rows


def syncs_per_advance(
    forward: BatchForward,
    config: Config,
    words: Sequence[int],
    mask_id: int,
    pad_id: int,
    end_ids: Sequence[int],
    lengths: Sequence[int] = (21, 40, 32),
    device: torch.device | None = None,
) -> list[list[tuple[str, str]]]:
    """The host syncs (op, where) counted in each `advance` until the batch is done (the last one with
    the `keep` that drops the finished rows)."""
    batch = RunningBatch(mask_id, pad_id, device or torch.device("cpu"), end_ids)
    batch.add(canvas_rows(config, words, lengths))
    counts = []
    for index in range(config.settings.steps):
        with count_host_syncs() as syncs:
            batch.advance(forward)
            if index + 1 == config.settings.steps:
                batch.keep([False] * len(batch))
        counts.append(syncs.events)
    return counts
