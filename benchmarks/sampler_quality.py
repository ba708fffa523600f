"""Measure sampler settings on a checkpoint: do stories end, repeat themselves, read as plausible?

For each setting, write a batch of unprompted stories and report:
- `ended`: the share of stories that reach PAD/SEP before the last position;
- `rep4`: the share of repeated word 4-grams within a story (argmax collapse shows up here);
- `judge_bpc`: the ELBO bound, in bits per character, of the stories under a *judge* model
  (default: the reference probe), an independent estimate of how plausible the text is;
- `s/story`: wall time per story when the whole batch is denoised together.
Low judge_bpc alone rewards repetition, high rep4 alone rewards noise: read them together.

    python benchmarks/sampler_quality.py --model app/models/tinystories-default --stories 8
"""

from __future__ import annotations

import argparse
import json
import math
import time

from app.diffusion.checkpoint import Checkpoint, load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.sampler_settings import Remasking, SamplerSettings
from app.diffusion.text import decode_story, story_end
from model_training.evaluation import text_bound

SETTINGS = [
    SamplerSettings(steps=256, remasking=Remasking.RANDOM, temperature=0.0),
    SamplerSettings(steps=256, remasking=Remasking.RANDOM, temperature=1.0),
    SamplerSettings(steps=256, remasking=Remasking.RANDOM, temperature=0.8),
    SamplerSettings(steps=256, remasking=Remasking.RANDOM, temperature=1.0, top_p=0.9),
    SamplerSettings(steps=256, remasking=Remasking.RANDOM, temperature=0.8, top_p=0.9),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=0.0),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=1.0, top_p=0.9),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=0.0, block_length=32),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8, top_p=0.9, block_length=32),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8, top_p=0.9, block_length=16),
    SamplerSettings(steps=256, remasking=Remasking.LOW_CONFIDENCE, temperature=0.8, top_p=0.9, block_length=64),
]


def repeated_4grams(text: str) -> float:
    """Share of word 4-grams that already occurred earlier in the same text."""
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def measure(ckpt: Checkpoint, judge: Checkpoint, cfg: SamplerSettings, stories: int, seed: int) -> dict:
    """Write `stories` stories with `cfg` in one batch and score them."""
    length = ckpt.config.seq_len
    start = time.perf_counter()
    *_, (_, last) = sample(ckpt.model, ckpt.mask_id, cfg, [seed + i for i in range(stories)], length)
    x = last.x
    elapsed = time.perf_counter() - start
    rows = [row.tolist() for row in x]
    texts = [decode_story(row, ckpt.tokenizer) for row in rows]
    return {
        "remasking": cfg.remasking.value,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "steps": cfg.steps,
        "block_length": cfg.block_length,
        "ended": sum(story_end(r, ckpt.tokenizer) < length for r in rows) / stories,
        "rep4": sum(map(repeated_4grams, texts)) / stories,
        "judge_bpc": (
            text_bound(judge.model, judge.tokenizer, texts, judge.config.seq_len).bits_per_char
            if any(texts)
            else math.nan
        ),  # nothing written: nothing to judge
        "words": sum(len(t.split()) for t in texts) / stories,
        "s_per_story": elapsed / stories,
        "example": texts[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint to measure")
    parser.add_argument("--judge", default="../shared/checkpoints/reference-probe", help="scoring model")
    parser.add_argument("--stories", type=int, default=8, help="stories per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument(
        "--remasking",
        choices=[r.value for r in Remasking],
        default=None,
        help="measure only the settings with this remasking",
    )
    args = parser.parse_args()
    ckpt, judge = load_checkpoint(args.model, device="cpu"), load_checkpoint(args.judge, device="cpu")
    rows = []
    print(
        f"{'remasking':<15}{'temp':>5}{'top_p':>6}{'block':>6}{'ended':>7}{'rep4':>7}{'judge_bpc':>10}{'words':>7}"
        f"{'s/story':>8}"
    )
    for cfg in SETTINGS:
        if args.remasking and cfg.remasking.value != args.remasking:
            continue
        row = measure(ckpt, judge, cfg, args.stories, args.seed)
        rows.append(row)
        print(
            f"{row['remasking']:<15}{row['temperature']:>5}{row['top_p']!s:>6}{row['block_length']!s:>6}"
            f"{row['ended']:>7.2f}"
            f"{row['rep4']:>7.3f}{row['judge_bpc']:>10.3f}{row['words']:>7.0f}{row['s_per_story']:>8.2f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
