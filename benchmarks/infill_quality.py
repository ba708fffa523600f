"""Infilling on held-out stories: blank the middle third, let the model write it back, judge the result.

Each of the tests' held-out stories (tests/data/tinystories/valid.txt, 60 validation-split stories the
shipped model never trained on) is encoded as training encodes it, with its end token, cut to the
model's positions. Its middle third (in tokens) is masked again, as an `edit` request masks it
(`app.diffusion.canvas.edit_canvas`), and denoised at the checkpoint's default sampler settings, seed =
the story's index. The judge (default: the reference probe) scores each row, in bits per character
(its ELBO bound, `model_training.evaluation.text_bound`; lower: more plausible):
- `original`: the stories as written;
- `infilled`: first and last thirds as written, the middle by the model;
- `infilled, end not pinned`: the same without the end token after the story: how an `ending` would
  read without one, and what an `edit` of the shipped model's `tokens` (returned without PAD) is;
- `unconstrained`: the whole story masked (the same positions, the same end): the model alone, with
  `endings: length_first` so that it writes words in every position (sampled, it may end the story
  inside the blank, and shorter stories are not the same comparison).
Also: end tokens the model wrote inside a blank that text follows (they would make it "flexible"),
forwards per story and sampling time. On a CPU each story is denoised alone by default (`--batch 1`):
a step skips the model only when no row of the batch reveals anything, so a batch of stories with a
third of their positions masked runs the model at almost every step, for every row. The JSON is
written after each row, and `--resume` keeps the rows it has.

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
from app.diffusion.sampler_settings import Endings, SamplerSettings
from app.diffusion.text import decode_story, end_token_ids
from app.paths import DEFAULT_MODEL_DIR, model_name
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


def write(
    ckpt: Checkpoint, canvases: Sequence[Canvas], seeds: Sequence[int], batch: int, settings: SamplerSettings
) -> Written:
    """Denoise every canvas with `settings`, `batch` at a time (similar lengths together; a shorter
    canvas gets PAD after its end, as training pads a story)."""
    pad = int(ckpt.tokenizer.pad_token_id)
    order = sorted(range(len(canvases)), key=lambda i: canvases[i].length)
    out: list[list[int]] = [[] for _ in canvases]
    forwards, start = 0, time.perf_counter()
    for first in range(0, len(order), batch):
        rows = order[first : first + batch]
        length = max(canvases[i].length for i in rows)
        padded = [Canvas(canvases[i].ids + (pad,) * (length - canvases[i].length), ckpt.mask_id) for i in rows]
        steps = sample(
            ckpt.model, ckpt.tokenizer, settings, [seeds[i] for i in rows], length,
            [c.prefix for c in padded], [c.pinned for c in padded],
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


def measure(
    ckpt: Checkpoint,
    judge: Checkpoint,
    name: str,
    group: list[Canvas],
    settings: SamplerSettings,
    args: argparse.Namespace,
) -> dict:
    """Write one group of canvases and score it: a row of the table, with its stories."""
    print(f"{name}: {len(group)} stories", file=sys.stderr, flush=True)
    written = write(ckpt, group, range(len(group)), args.batch, settings)
    texts = texts_of(ckpt, group, written)
    found, total = ends_in_blanks(ckpt, group, written)
    stories = [
        {
            "seed": seed,
            "text": text,
            "fill": decode_story([t for p, t in enumerate(ids) if group[seed].ids[p] == ckpt.mask_id], ckpt.tokenizer),
            "tokens": ids,
        }
        for seed, (text, ids) in enumerate(zip(texts, written.ids, strict=True))
    ]
    return {
        "name": name,
        "stories": len(group),
        "judge_bpc": judge_bpc(judge, texts, args.t_samples),
        "words": sum(len(t.split()) for t in texts) / len(texts),
        "ends_in_middle_blanks": found,
        "middle_blank_positions": total,
        "forwards_per_story": written.forwards / len(group),
        "seconds": round(written.seconds, 1),
        "settings": settings.model_dump(mode="json"),
        "written": stories,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'':<26}{'stories':>8}{'judge bits/char':>17}{'words':>7}{'end tokens in blanks':>22}{'fwd/story':>10}")
    for row in rows:
        line = f"{row['name']:<26}{row['stories']:>8}{row['judge_bpc']:>17.3f}"
        if "seconds" in row:
            ends = f"{row['ends_in_middle_blanks']}/{row['middle_blank_positions']}"
            line += f"{row['words']:>7.0f}{ends:>22}{row['forwards_per_story']:>10.0f}  ({row['seconds']:.0f} s)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint that writes the stories")
    parser.add_argument("--judge", default="../shared/checkpoints/reference-probe", help="scoring model")
    parser.add_argument("--stories", type=Path, default=HELD_OUT)
    parser.add_argument("--limit", type=int, default=None, help="only the first N stories")
    parser.add_argument("--batch", type=int, default=1, help="stories per sample() call")
    parser.add_argument("--t-samples", type=int, default=4, help="judge's t samples per story")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here, after each row")
    parser.add_argument("--resume", action="store_true", help="keep the rows --json has already, write the rest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt, judge = load_checkpoint(args.model, device="cpu"), load_checkpoint(args.judge, device="cpu")
    stories = [encode(ckpt, text) for text in held_out_stories(args.stories)[: args.limit]]
    vocab, mask_id = len(ckpt.tokenizer), ckpt.mask_id
    groups = {
        "infilled": [edit_canvas(s.tokens, [s.middle], mask_id, vocab, 10**6) for s in stories],
        "infilled, end not pinned": [
            edit_canvas(s.tokens[: s.body[1]], [s.middle], mask_id, vocab, 10**6) for s in stories
        ],
        "unconstrained": [edit_canvas(s.tokens, [s.body], mask_id, vocab, 10**6) for s in stories],
    }
    defaults = ckpt.config.sampler_settings
    every_position = defaults.model_copy(update={"endings": Endings.LENGTH_FIRST})  # no end inside the blank
    settings_of = {name: every_position if name == "unconstrained" else defaults for name in groups}
    settings = defaults.model_dump(mode="json")
    report = {"model": model_name(ckpt.source), "judge": judge.source, "settings": settings, "batch": args.batch}
    report |= {"threads": args.threads, "t_samples": args.t_samples, "rows": []}
    if args.resume and args.json and args.json.exists():
        report = json.loads(args.json.read_text())
    done = {row["name"] for row in report["rows"]}
    if "original" not in done:
        texts = [s.text for s in stories]
        report["rows"].append(
            {"name": "original", "stories": len(stories), "judge_bpc": judge_bpc(judge, texts, args.t_samples)}
        )
    for name, group in groups.items():
        if name not in done:
            report["rows"].append(measure(ckpt, judge, name, group, settings_of[name], args))
            if args.json:
                args.json.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report["rows"])
    seconds = sum(row.get("seconds", 0) for row in report["rows"])
    print(f"sampling took {seconds:.0f} s ({args.threads} threads, batch {args.batch})")


if __name__ == "__main__":
    main()
