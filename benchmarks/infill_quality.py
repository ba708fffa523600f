"""Infilling on held-out stories: blank the middle third, let the model write it back, judge the result.

Each of the tests' 60 held-out stories (tests/data/tinystories/valid.txt, validation-split stories the
shipped model never trained on) is encoded as training encodes it, with its end token, cut to the
model's positions. Its middle third (in tokens) is masked again, as an `edit` request masks it
(`app.diffusion.canvas.edit_canvas`), and denoised at the checkpoint's default sampler settings, seed =
the story's index. The judge (default: the reference probe) scores, in bits per character (its ELBO
bound, `model_training.evaluation.text_bound`; lower: more plausible):
- `original`: the stories as written;
- `infilled`: first and last thirds as written, the middle by the model;
- `unconstrained`: the whole story masked (the same positions, the same end): the model alone at that length;
- `infilled, end not pinned` (the first `--ablation` stories): the same infill without the end token
  after the story, which is how an `ending` would read without one.
Also reported: end tokens the model wrote inside a middle blank (they would make a blank "flexible"),
forwards, and wall time. On a CPU each story is denoised alone by default (`--batch 1`): a step that
reveals nothing skips the model only when it reveals nothing in every row of the batch, so batching
stories with a third of their positions masked multiplies a CPU's forwards (`--batch 60` for one batch).

    python benchmarks/infill_quality.py --json docs/infill_quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from app.diffusion.canvas import Canvas, edit_canvas, story_marks
from app.diffusion.checkpoint import Checkpoint, load_checkpoint
from app.diffusion.generation import sample
from app.diffusion.text import decode_story, end_token_ids
from app.paths import DEFAULT_MODEL_DIR
from model_training.evaluation import text_bound

HELD_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tinystories" / "valid.txt"


@dataclass(frozen=True)
class Story:
    """A held-out story as token ids, and where its middle third lies."""

    text: str
    tokens: tuple[int, ...]  # lead, the story, its end token
    body: tuple[int, int]  # [start, end) of the story's own tokens
    middle: tuple[int, int]  # [start, end) of the middle third of the body


def held_out_stories(path: Path) -> list[str]:
    return [story.strip() for story in path.read_text().split("<|endoftext|>") if story.strip()]


def encode(ckpt: Checkpoint, text: str) -> Story:
    """`text` as training encodes it (cut to fit with its end token), and its middle third."""
    lead, end = story_marks(ckpt.tokenizer)
    body = ckpt.tokenizer(text, add_special_tokens=False)["input_ids"][: ckpt.config.seq_len - len(lead) - len(end)]
    start, n = len(lead), len(body)
    return Story(text, (*lead, *body, *end), (start, start + n), (start + n // 3, start + 2 * n // 3))


@dataclass
class Written:
    """The model's sequences for a list of canvases, and what writing them cost."""

    ids: list[list[int]]
    forwards: int
    seconds: float


def write(ckpt: Checkpoint, canvases: Sequence[Canvas], seeds: Sequence[int], batch: int) -> Written:
    """Denoise every canvas at the checkpoint's default settings, `batch` at a time (similar lengths
    together; a shorter canvas gets PAD after its end, as training pads a story)."""
    settings, pad = ckpt.config.sampler_settings, int(ckpt.tokenizer.pad_token_id)
    ends = sorted(end_token_ids(ckpt.tokenizer))
    order = sorted(range(len(canvases)), key=lambda i: canvases[i].length)
    out: list[list[int]] = [[] for _ in canvases]
    forwards, start = 0, time.perf_counter()
    for first in range(0, len(order), batch):
        rows = order[first : first + batch]
        length = max(canvases[i].length for i in rows)
        padded = [Canvas(canvases[i].ids + (pad,) * (length - canvases[i].length), ckpt.mask_id) for i in rows]
        steps = sample(
            ckpt.model, ckpt.mask_id, settings, [seeds[i] for i in rows], length,
            [c.prefix for c in padded], [c.pinned for c in padded], ends,
        )  # fmt: skip
        for _, step in steps:
            forwards += step.model_called
            last = step
        for i, row in zip(rows, last.x.tolist(), strict=True):
            out[i] = row[: canvases[i].length]
        done = first + len(rows)
        print(f"  {done}/{len(order)} written, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return Written(out, forwards, time.perf_counter() - start)


def texts_of(ckpt: Checkpoint, canvases: Sequence[Canvas], written: Written) -> list[str]:
    ends = end_token_ids(ckpt.tokenizer)
    return [decode_story(c.visible(ids, ends), ckpt.tokenizer) for c, ids in zip(canvases, written.ids, strict=True)]


def ends_in_blanks(ckpt: Checkpoint, canvases: Sequence[Canvas], written: Written) -> tuple[int, int]:
    """(end tokens written inside blanks that text follows, positions of such blanks)."""
    ends = end_token_ids(ckpt.tokenizer)
    found = total = 0
    for canvas, ids in zip(canvases, written.ids, strict=True):
        hidden = len(ids) - len(canvas.visible(ids, ends))
        found += hidden
        last_word = max((p for p, t in enumerate(canvas.ids) if t != ckpt.mask_id and t not in ends), default=-1)
        total += sum(end - start for start, end in canvas.blanks if end <= last_word)
    return found, total


def judge_bpc(judge: Checkpoint, texts: list[str], t_samples: int) -> float:
    return text_bound(judge.model, judge.tokenizer, texts, judge.config.seq_len, num_t_samples=t_samples).bits_per_char


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint that writes the stories")
    parser.add_argument("--judge", default="../shared/checkpoints/reference-probe", help="scoring model")
    parser.add_argument("--stories", type=Path, default=HELD_OUT)
    parser.add_argument("--limit", type=int, default=None, help="only the first N stories")
    parser.add_argument("--batch", type=int, default=1, help="stories per sample() call")
    parser.add_argument("--ablation", type=int, default=20, help="stories for the end-not-pinned row (0: none)")
    parser.add_argument("--t-samples", type=int, default=4, help="judge's t samples per story")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    ckpt, judge = load_checkpoint(args.model, device="cpu"), load_checkpoint(args.judge, device="cpu")
    stories = [encode(ckpt, text) for text in held_out_stories(args.stories)[: args.limit]]
    seeds = list(range(len(stories)))
    canvases = {
        "infilled": [edit_canvas(s.tokens, [s.middle], ckpt.mask_id, len(ckpt.tokenizer), 10**6) for s in stories],
        "unconstrained": [edit_canvas(s.tokens, [s.body], ckpt.mask_id, len(ckpt.tokenizer), 10**6) for s in stories],
    }
    ablated = stories[: args.ablation]
    canvases["infilled, end not pinned"] = [
        edit_canvas(s.tokens[: s.body[1]], [s.middle], ckpt.mask_id, len(ckpt.tokenizer), 10**6) for s in ablated
    ]
    rows = [{"name": "original", "stories": len(stories)}]
    rows[0]["judge_bpc"] = judge_bpc(judge, [s.text for s in stories], args.t_samples)
    examples = []
    for name, group in canvases.items():
        if not group:
            continue
        print(f"{name}: {len(group)} stories", file=sys.stderr, flush=True)
        written = write(ckpt, group, seeds, args.batch)
        texts = texts_of(ckpt, group, written)
        found, total = ends_in_blanks(ckpt, group, written)
        rows.append(
            {
                "name": name,
                "stories": len(group),
                "judge_bpc": judge_bpc(judge, texts, args.t_samples),
                "words": sum(len(t.split()) for t in texts) / len(texts),
                "ends_in_middle_blanks": found,
                "middle_blank_positions": total,
                "forwards_per_story": written.forwards / len(group),
                "seconds": round(written.seconds, 1),
            }
        )
        if name == "infilled" and ablated:
            subset = texts[: len(ablated)]
            rows.append({"name": "original, first stories", "stories": len(ablated)})
            rows[-1]["judge_bpc"] = judge_bpc(judge, [s.text for s in ablated], args.t_samples)
            rows.append({"name": "infilled, first stories", "stories": len(ablated)})
            rows[-1]["judge_bpc"] = judge_bpc(judge, subset, args.t_samples)
        for i, (text, ids) in enumerate(zip(texts, written.ids, strict=True)):
            a, b = stories[i].middle if name.startswith("infilled") else stories[i].body
            fill = decode_story(ids[a:b], ckpt.tokenizer)
            examples.append({"name": name, "seed": seeds[i], "text": text, "fill": fill, "tokens": ids})
    print(
        f"{'':<28}{'stories':>8}{'judge bits/char':>17}{'words':>7}{'end tokens in blanks':>22}"
        f"{'fwd/story':>10}{'s':>7}"
    )
    for row in rows:
        ends = f"{row['ends_in_middle_blanks']}/{row['middle_blank_positions']}" if "seconds" in row else ""
        extra = (
            f"{row['words']:>7.0f}{ends:>22}{row['forwards_per_story']:>10.0f}{row['seconds']:>7.0f}" if ends else ""
        )
        print(f"{row['name']:<28}{row['stories']:>8}{row['judge_bpc']:>17.3f}{extra}")
    total_s = time.perf_counter() - wall
    print(f"wall time {total_s:.0f} s ({torch.get_num_threads()} threads, batch {args.batch})")
    if args.json:
        settings = ckpt.config.sampler_settings.model_dump(mode="json")
        report = {"model": ckpt.source, "judge": judge.source, "settings": settings, "batch": args.batch}
        report |= {"t_samples": args.t_samples, "wall_s": round(total_s, 1), "rows": rows, "stories": examples}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
