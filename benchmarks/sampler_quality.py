"""Measure sampler settings on a checkpoint: what each costs in forwards and what its stories are worth.

For each setting, write a batch of unprompted stories with the batched `sample` (end tokens guarded
as the server guards them) and report, per setting:
- `fwd`: model forwards per story (steps in which the model ran for that story);
- `tok/fwd`: tokens written (the positions not fixed) per forward;
- `judge`: the ELBO bound, in bits per character, of the stories under a *judge* model (default: the
  reference probe), an estimate of how plausible the text is (lower: more plausible) by a masked-diffusion
  model of the generator's own family, which may reward its habits;
- `AR ppl` and `×real`: generation perplexity per token under the autoregressive judge
  (`python -m model_training.judge`, a GPT-2 of another family and vocabulary; see docs/judge.md), and
  its ratio to the held-out stories' (the first row);
- `rep4`: the share of repeated word 4-grams within a story (argmax collapse and loops show up here);
- `dist2`: distinct word bigrams over all bigrams of the setting's stories (diversity across stories);
- `Hpool`: the entropy (bits) of the setting's words pooled over its stories: its vocabulary;
- `H` and `d2/st`: per story, the entropy (bits) of its word distribution and its distinct-2, averaged
  over the stories: word choice within a story, comparable with the held-out stories' own values;
- `words` and `<60w`: mean words per story and the share under 60 words, against the held-out
  stories' own distribution (the first row);
- `ended`: the share of stories that reach PAD/SEP before the last position;
- `broken`: the share of stories with a word after an end token (fragments joined into one text; 0
  since the sampler keeps every story contiguous, `app/diffusion/story_length.py`);
- `s/story`: wall time per story with the whole batch denoised together; with `--alone K`, also
  `alone`: the mean of K stories denoised one at a time (what a single request waits on a CPU).
Low judge scores alone reward repetition, high rep4 alone rewards noise: read them together.

    python benchmarks/sampler_quality.py --stories 32 --held-out ../shared/data/tinystories/valid.txt.gz \
        --held-out-count 256 --json docs/story-quality.json      # the grid behind both quality docs
    python benchmarks/sampler_quality.py --render docs/story-quality.json --table table.md \
        --plot docs/fast-decoding.png                            # tables and plot from the JSON, no model
    python benchmarks/sampler_quality.py --presets --alone 3     # the checkpoint's default and presets
    python benchmarks/sampler_quality.py --only threshold --stories 4   # settings whose label matches
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from app.diffusion.canvas import story_marks
from app.diffusion.checkpoint import Checkpoint, load_checkpoint
from app.diffusion.cpu_backend import CPU_BACKENDS
from app.diffusion.cpu_forward import QueriedForward, select_forward
from app.diffusion.generation import sample
from app.diffusion.sampler_settings import PRESETS, SamplerOverrides, SamplerSettings
from app.diffusion.text import decode_story, end_token_ids, story_end
from app.paths import DEFAULT_MODEL_DIR
from model_training.evaluation import text_bound
from model_training.judge import DEFAULT_VALID, Judge, ensure_judge, story_statistics, surprise

HELD_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tinystories" / "valid.txt"


def _rule(remasking: str, steps: int, blocks: int | None = 32, **fields: Any) -> dict[str, Any]:
    """A confidence-ranked rule's fields, end tokens guarded (without, the tail's PAD ends every story)."""
    return {"remasking": remasking, "steps": steps, "block_length": blocks, "guard_endings": True} | fields


QUALITY_GRID: list[tuple[str, dict[str, Any]]] = [
    ("random T=128 calibrated", {}),
    ("random T=24 temp 0.7", {"steps": 24, "temperature": 0.7}),
    ("random T=64 temp 0.75", {"steps": 64, "temperature": 0.75}),
    ("random T=128 sampled endings", {"endings": "sampled"}),
    ("random T=128 length-first", {"endings": "length_first"}),
    ("random T=128 temp 0.9 top-p 0.95", {"temperature": 0.9, "top_p": 0.95}),
    ("threshold τ=0.9 b32 T=64", _rule("threshold", 64, confidence_threshold=0.9)),
    ("random T=24 temp 0.7 length-first", {"steps": 24, "temperature": 0.7, "endings": "length_first"}),
    ("random T=64 temp 0.75 length-first", {"steps": 64, "temperature": 0.75, "endings": "length_first"}),
]  # fmt: skip
"""Label -> fields over `GRID_BASE`: the previous default and presets first (a run stopped early keeps
them), then where stories end, word choice, the remasking rule, and the presets with the length drawn
first. Both quality docs (docs/story-quality.md, docs/fast-decoding.md) render this one grid."""

SHIPPED_DEFAULT = "random T=128 length-first"
"""The grid row with the shipped model's default settings (its `diffusion_config.json`), chosen from
this grid: the plot draws the `fast` target against it."""

GRID_BASE: dict[str, Any] = {"remasking": "random", "steps": 128, "endings": "calibrated", "temperature": 0.8,
                             "top_p": 0.9, "top_k": None, "block_length": None, "revision": 0.0}  # fmt: skip
"""Every grid row's settings but those it names: fixed here, so a grid re-run after the checkpoint's
defaults change still measures what its labels say."""

SHIPPED_FIELDS: dict[str, Any] = {"endings": "length_first"}
"""The shipped default's fields over `GRID_BASE` (random, 128 steps, temperature 0.8, top-p 0.9)."""

REVISION_SWEEP: list[tuple[str, dict[str, Any]]] = [
    (f"random T=128 length-first revision {eta}", SHIPPED_FIELDS | {"revision": eta})
    for eta in (0.0, 0.005, 0.01, 0.02, 0.04)
]
"""Revision sampling's η at the shipped default's 128 steps: a small sweep (on few stories) of how the
rate moves each judge and the word statistics."""

REVISION_ETA = 0.01
"""The η of `REVISION_GRID`'s revising rows: ReMDM's middle value, fixed when the grid had to start on a
shared 2-core CPU, before `REVISION_SWEEP` ended; the sweep's rows are shown beside it
(docs/story-quality.md, "Revision sampling")."""

EQUAL_FORWARDS_STEPS = (150, 300)
"""Steps without revisions at which a story costs about as many forwards as the revising rows at 128 and
256 steps (a remasked word is written again, so revisions cost forwards): the equal-cost comparison."""

REVISION_GRID: list[tuple[str, dict[str, Any]]] = [
    *(
        (f"random T={steps} length-first{label}", SHIPPED_FIELDS | {"steps": steps, "revision": eta})
        for label, eta in (("", 0.0), (f" revision {REVISION_ETA}", REVISION_ETA))
        for steps in (128, 256, 512)
    ),
    *(
        (f"random T={steps} length-first (equal forwards)", SHIPPED_FIELDS | {"steps": steps})
        for steps in EQUAL_FORWARDS_STEPS
    ),
]
"""The shipped default at 128, 256 and 512 steps, without and then with revision sampling, and without
at the revising rows' cost in forwards: does spending more forwards on revisions buy a better story than
spending them on smaller reveals?"""

GRIDS = {"quality": QUALITY_GRID, "revision-sweep": REVISION_SWEEP, "revision": REVISION_GRID}


def held_out_stories(path: Path = HELD_OUT) -> list[str]:
    """The held-out stories, one per `<|endoftext|>`-terminated block (a .gz file is read compressed)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [" ".join(block.split()) for block in text.split("<|endoftext|>") if block.strip()]


def as_written(ckpt: Checkpoint, texts: list[str]) -> list[str]:
    """Each story as the checkpoint could write it: cut to its sequence length with the story's end, as
    training encodes it (a story that does not fit has no end in training either)."""
    lead, end = story_marks(ckpt.tokenizer)
    room = ckpt.config.seq_len - len(lead) - len(end)
    ids = ckpt.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [
        decode_story(story[:room], ckpt.tokenizer) if len(story) > room else text
        for story, text in zip(ids, texts, strict=True)
    ]


def text_scores(texts: list[str], judge: Checkpoint, ar_judge: Judge | None) -> dict[str, Any]:
    """What every row reports about its texts, the held-out stories' included: both judges, word statistics."""
    return {
        "judge_bpc": (
            text_bound(judge.model, judge.tokenizer, texts, judge.config.seq_len).bits_per_char
            if any(texts)
            else math.nan
        ),  # nothing written: nothing to judge
        "ar_ppl": surprise(ar_judge, texts).perplexity if ar_judge is not None else None,
        "ar_judge": ar_judge.info.get("digest") if ar_judge is not None else None,
        **story_statistics(texts),
    }


def against_held_out(row: dict[str, Any], held_out: dict[str, Any]) -> dict[str, Any]:
    """`row` with its AR judge perplexity as a ratio to the held-out stories' (1.0: as plausible as them)."""
    known = row.get("ar_ppl") is not None and held_out.get("ar_ppl") is not None
    return row | {"ar_ppl_ratio": row["ar_ppl"] / held_out["ar_ppl"] if known else None}


def load_ar_judge(spec: str) -> Judge | None:
    """`auto`: the default AR judge from its cache (trained first when missing); `none`: no AR judge; else a folder."""
    if spec == "none":
        return None
    return ensure_judge(valid=DEFAULT_VALID) if spec == "auto" else Judge.load(Path(spec))


def fragmented(ids: list[int], end_ids: set[int]) -> bool:
    """Whether a written sequence holds a word after an end token: fragments joined into one "story"."""
    first_end = next((i for i, token in enumerate(ids) if token in end_ids), len(ids))
    return any(token not in end_ids for token in ids[first_end:])


def write_stories(
    ckpt: Checkpoint, cfg: SamplerSettings, seeds: list[int], forward: QueriedForward | None = None
) -> tuple[list[list[int]], list[int], float]:
    """Denoise one story per seed in one batch: (token ids, forwards per story, seconds)."""
    forwards = torch.zeros(len(seeds), dtype=torch.long)
    start = time.perf_counter()
    for _, step in sample(ckpt.model, ckpt.tokenizer, cfg, seeds, ckpt.config.seq_len, forward=forward):
        if step.model_called:
            forwards[step.rows.unique()] += 1  # a row the model ran for reveals at least one token
        last = step
    elapsed = time.perf_counter() - start
    return [row.tolist() for row in last.x], forwards.tolist(), elapsed


def measure(
    ckpt: Checkpoint,
    judges: tuple[Checkpoint, Judge | None],
    label: str,
    cfg: SamplerSettings,
    stories: int,
    seed: int,
    alone: int,
    forward: QueriedForward | None = None,
) -> dict[str, Any]:
    """Write `stories` stories with `cfg` in one batch (and `alone` more one at a time) and score them."""
    length = ckpt.config.seq_len
    rows, forwards, elapsed = write_stories(ckpt, cfg, [seed + i for i in range(stories)], forward)
    texts = [decode_story(row, ckpt.tokenizer) for row in rows]
    alone_s = [write_stories(ckpt, cfg, [seed + i], forward)[2] for i in range(alone)]
    return {
        "label": label,
        "settings": cfg.model_dump(mode="json"),
        "forwards": statistics.fmean(forwards),
        "tokens_per_forward": statistics.fmean(length / f for f in forwards),
        **text_scores(texts, *judges),
        "ended": sum(story_end(r, ckpt.tokenizer) < length for r in rows) / stories,
        "broken": sum(map(fragmented, rows, itertools.repeat(end_token_ids(ckpt.tokenizer)))) / stories,
        "s_per_story": elapsed / stories,
        "load": os.getloadavg()[0],  # the machine's 1-minute load when the setting ended: times are shared
        "alone_s": statistics.fmean(alone_s) if alone_s else None,
        "stories": stories,
        "examples": texts[:3],
        "texts": texts,
    }


def settings_to_measure(
    ckpt: Checkpoint, presets: bool, only: str | None, grid: str = "quality", skip: str | None = None
) -> list[tuple[str, SamplerSettings]]:
    """A grid over the checkpoint's defaults, or its defaults and presets; `only`: labels containing it;
    `skip`: not those containing it."""
    if presets:
        chosen = [("default", ckpt.config.sampler_settings)]
        chosen += [(f"preset {name}", ckpt.config.settings_for(name)) for name in PRESETS]
    else:
        base = ckpt.config.sampler_settings
        chosen = [(label, base.override(SamplerOverrides(**(GRID_BASE | f)))) for label, f in GRIDS[grid]]
    return [
        (label, cfg) for label, cfg in chosen if (only is None or only in label) and (skip is None or skip not in label)
    ]


HEADER = (
    f"{'setting':<28}{'fwd':>6}{'tok/fwd':>8}{'judge':>7}{'AR ppl':>8}{'×real':>7}{'rep4':>7}{'dist2':>7}"
    f"{'Hpool':>7}{'H':>6}{'d2/st':>6}{'words':>7}{'<60w':>6}{'ended':>7}{'broken':>7}{'s/story':>8}{'alone':>7}"
)


def line(row: dict[str, Any]) -> str:
    def num(key: str, spec: str) -> str:
        return "-" if row.get(key) is None else format(row[key], spec)

    return (
        f"{row['label']:<28}{num('forwards', '.1f'):>6}{num('tokens_per_forward', '.2f'):>8}"
        f"{row['judge_bpc']:>7.3f}{num('ar_ppl', '.2f'):>8}{num('ar_ppl_ratio', '.3f'):>7}{row['rep4']:>7.3f}"
        f"{row['distinct2']:>7.3f}{num('word_entropy_pooled', '.2f'):>7}{num('word_entropy', '.2f'):>6}"
        f"{num('distinct2_story', '.3f'):>6}{row['words']:>7.0f}"
        f"{row['short']:>6.2f}{num('ended', '.2f'):>7}{num('broken', '.2f'):>7}"
        f"{num('s_per_story', '.2f'):>8}{num('alone_s', '.2f'):>7}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (the held-out stories first, for reference)."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    def ar_cell(row: dict[str, Any]) -> str:
        ratio = row.get("ar_ppl_ratio")
        return cell(row, "ar_ppl", ".2f") + ("" if ratio is None else f" ({ratio:.3f}×)")

    head = (
        "| setting | forwards / story | tokens / forward | judge bits/char | AR judge perplexity (× real) | "
        "repeated 4-grams | distinct-2 | word entropy, pooled | word entropy / story | distinct-2 / story | "
        "words: mean (quartiles) | under 60 words | ended | broken | "
        "s/story (batch) | s/story alone |"
    )
    out = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for row in rows:
        q1, median, q3 = row["words_quartiles"]
        out.append(
            f"| {row['label']} | {cell(row, 'forwards', '.1f')} | {cell(row, 'tokens_per_forward', '.2f')} | "
            f"{'-' if math.isnan(row['judge_bpc']) else format(row['judge_bpc'], '.3f')} | {ar_cell(row)} | "
            f"{row['rep4']:.1%} | {row['distinct2']:.3f} | {cell(row, 'word_entropy_pooled', '.2f')} | "
            f"{cell(row, 'word_entropy', '.2f')} | {cell(row, 'distinct2_story', '.3f')} | "
            f"{row['words']:.0f} ({q1:.0f} / {median:.0f} / {q3:.0f}) | {row['short']:.0%} | "
            f"{cell(row, 'ended', '.0%')} | {cell(row, 'broken', '.0%')} | "
            f"{cell(row, 's_per_story', '.2f')} | {cell(row, 'alone_s', '.2f')} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """The independent judge's perplexity (as a ratio to the real stories') and words per story against
    forwards per story, one point per setting; hollow points loop (over 2% repeated 4-grams); the shaded
    corner is the `fast` target against the shipped default's row (`SHIPPED_DEFAULT`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    reference, measured = rows[0], [row for row in rows[1:] if row.get("ar_ppl_ratio") is not None]
    default = next((row for row in measured if row["label"] == SHIPPED_DEFAULT), measured[0])
    fig, (quality, words) = plt.subplots(1, 2, figsize=(14, 7))
    colours = {"random": "tab:blue", "low_confidence": "tab:orange", "threshold": "tab:green",
               "entropy_bound": "tab:red"}  # fmt: skip
    for row in measured:
        colour = colours[row["settings"]["remasking"]]
        loops = row["rep4"] > 0.02
        for axis, key in ((quality, "ar_ppl_ratio"), (words, "words")):
            axis.scatter(row["forwards"], row[key], s=40, edgecolors=colour, facecolors="none" if loops else colour)
            axis.annotate(row["label"], (row["forwards"], row[key]), fontsize=6.5, xytext=(4, 3),
                          textcoords="offset points")  # fmt: skip
    quality.axhline(1.0, color="grey", linestyle=":", label="held-out stories")
    quality.fill_between([10, default["forwards"] / 4], 0, default["ar_ppl_ratio"] * 1.1, color="gold", alpha=0.15,
                         label="fast target: ≤ 1/4 of the default's forwards, perplexity within 10%")  # fmt: skip
    words.axhline(reference["words"], color="grey", linestyle=":", label="held-out stories (mean)")
    words.axhspan(reference["words"] * 0.9, reference["words"] * 1.1, color="gold", alpha=0.15,
                  label="within 10% of the held-out mean")  # fmt: skip
    ylabels = ("AR judge perplexity / real stories' (lower: more plausible)", "words per story")
    for axis, ylabel in zip((quality, words), ylabels, strict=True):
        axis.set_xscale("log")
        axis.set_xticks([16, 24, 32, 64, 128, 256])
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlim(12, 320)
        axis.set_xlabel("model forwards per story (log)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    ratios = [row["ar_ppl_ratio"] for row in measured]
    quality.set_ylim(min([*ratios, 1.0]) - 0.1, max(ratios) + 0.1)
    for rule, colour in colours.items():
        quality.scatter([], [], color=colour, label=rule)
    quality.scatter([], [], edgecolors="grey", facecolors="none", label="loops: over 2% repeated 4-grams")
    for axis in (quality, words):  # below the axes: every corner of them holds a point
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    per_setting = f", {default['stories']} per setting" if "stories" in default else ""
    fig.suptitle(f"Quality and length against cost (256-token stories{per_setting})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="checkpoint to measure")
    parser.add_argument("--judge", default="../shared/checkpoints/reference-probe", help="ELBO scoring model")
    parser.add_argument(
        "--ar-judge",
        default="auto",
        help="autoregressive judge: `auto` (the default one, cached; trained first when missing, about 15-20 "
        "minutes), a folder saved by `python -m model_training.judge`, or `none`",
    )
    parser.add_argument("--stories", type=int, default=16, help="stories per setting, denoised as one batch")
    parser.add_argument("--alone", type=int, default=0, help="also time this many stories one at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--held-out", type=Path, default=HELD_OUT, help="reference stories (.txt or .txt.gz); default: the tests' 60"
    )
    parser.add_argument(
        "--held-out-count", type=int, default=None, help="use only the first N reference stories (default: all)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--presets", action="store_true", help="the checkpoint's default and presets, not a grid")
    parser.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="quality",
        help="the settings to measure: quality (QUALITY_GRID), revision-sweep (REVISION_SWEEP: η at 128 steps), "
        "revision (REVISION_GRID: 128/256/512 steps without and with revision sampling)",
    )
    parser.add_argument("--only", default=None, help="measure only the settings whose label contains this")
    parser.add_argument("--skip", default=None, help="measure none of the settings whose label contains this")
    parser.add_argument(
        "--cpu-backend",
        choices=CPU_BACKENDS,
        default="eager",
        help="how the model runs (`cpu_forward.select_forward`); onnx writes the same stories faster, token for token",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--resume", action="store_true", help="keep --json's rows and measure only the others")
    parser.add_argument("--table", default=None, help="also write the rows as a markdown table to this file")
    parser.add_argument("--plot", default=None, help="also plot quality against forwards to this PNG")
    parser.add_argument(
        "--render",
        nargs="+",
        default=None,
        help="measure nothing: write --table and --plot from this JSON (several: their rows in order, after the "
        "first one's reference row, which every file must share)",
    )
    parser.add_argument(
        "--reference-from",
        default=None,
        help="take the reference row from this JSON (a run on the same --held-out stories) instead of scoring "
        "them again: for runs of other settings in parallel, rendered together with --render",
    )
    parser.add_argument(
        "--rescore",
        default=None,
        help="write no story: score this JSON's stored texts again with --ar-judge (the reference row's from "
        "--held-out) and write it back, with --table and --plot",
    )
    args = parser.parse_args()
    for given in (*(args.render or ()), args.rescore, args.reference_from):
        if given and not Path(given).is_file():
            parser.error(f"no such JSON file: {given}")
    if args.render:
        write_outputs(joined([json.loads(Path(path).read_text()) for path in args.render]), args.table, args.plot)
        return
    torch.set_num_threads(args.threads)
    if args.rescore:
        rows = rescored(json.loads(Path(args.rescore).read_text()), args)
        Path(args.rescore).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        write_outputs(rows, args.table, args.plot)
        return
    ckpt, judge = load_checkpoint(args.model, device="cpu"), load_checkpoint(args.judge, device="cpu")
    judges = (judge, load_ar_judge(args.ar_judge))
    if args.resume and args.json and Path(args.json).exists():
        rows = json.loads(Path(args.json).read_text())
    elif args.reference_from:
        rows = json.loads(Path(args.reference_from).read_text())[:1]
    else:
        held_out = as_written(ckpt, held_out_stories(args.held_out)[: args.held_out_count])
        label = f"held-out stories ({len(held_out)}, {args.held_out.name})"
        reference = {"label": label, **text_scores(held_out, *judges)}
        rows = [against_held_out(reference, reference)]
        if args.json:  # the reference alone is worth keeping (`--only` may match nothing)
            Path(args.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    print(HEADER)
    for row in rows:
        print(line(row), flush=True)
    done = {row["label"] for row in rows}
    forward = select_forward(ckpt.model, args.cpu_backend)
    for label, cfg in settings_to_measure(ckpt, args.presets, args.only, args.grid, args.skip):
        if label in done:
            continue
        measured = measure(ckpt, judges, label, cfg, args.stories, args.seed, args.alone, forward)
        rows.append(against_held_out(measured | {"cpu_backend": forward.name}, rows[0]))
        print(line(rows[-1]), flush=True)
        if args.json:  # after every setting: a long run that is stopped keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    write_outputs(rows, args.table, args.plot)


def rescored(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """`rows` with the AR judge's columns recomputed from their texts: what a full run with this judge
    writes, since the stories are seeded and the other columns do not depend on the AR judge."""
    ar_judge = load_ar_judge(args.ar_judge)
    assert ar_judge is not None, "--rescore needs an AR judge"
    held_out = as_written(load_checkpoint(args.model, device="cpu"), held_out_stories(args.held_out))
    texts = [row.get("texts", held_out[: args.held_out_count]) for row in rows]  # the reference stores none
    ppl = [surprise(ar_judge, t).perplexity for t in texts]
    judged = [row | {"ar_ppl": p, "ar_judge": ar_judge.info.get("digest")} for row, p in zip(rows, ppl, strict=True)]
    return [against_held_out(row, judged[0]) for row in judged]


def joined(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several runs as one: the first run's reference row, then every run's settings rows."""
    reference = runs[0][0]
    for run in runs[1:]:
        if run[0] != reference:
            raise SystemExit(f"the runs were measured against different references: {run[0]['label']}")
    return [reference, *(row for run in runs for row in run[1:])]


def write_outputs(rows: list[dict[str, Any]], table: str | None, plot_path: str | None) -> None:
    if table:
        Path(table).write_text(markdown(rows))
    if plot_path:
        plot(rows, plot_path)


if __name__ == "__main__":
    main()
