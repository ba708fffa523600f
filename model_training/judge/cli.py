"""`python -m model_training.judge train|score`: train the judge, or score stories against the real ones.

Bad input is one line on stderr and exit code 2, before any training.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.flags import add_field_flags, error_line, given_fields
from model_training.errors import TrainingInputError
from model_training.judge.config import CACHE_ENV, DEFAULT_VALID, JudgeConfig, cache_dir

if TYPE_CHECKING:
    from model_training.judge.model import Judge

CONTROL = "control: real, words shuffled"

PROG = "python -m model_training.judge"
EPILOG = f"""examples:
  {PROG} train                          # the default judge, cached; prints its held-out perplexity
  {PROG} score stories.jsonl other.jsonl --json scores.json
  {PROG} score --control --json docs/judge.json --table docs/judge-table.md   # docs/judge.md

The judge is cached in ${CACHE_ENV}/<digest>/ (default ~/.cache/storydiff/judge/<digest>/), the digest
naming its config and training data; `score` trains it there first when it is missing.
"""


def build_parser() -> argparse.ArgumentParser:
    """Two commands sharing the judge's options: one flag per JudgeConfig field, plus where it lives."""
    common = argparse.ArgumentParser(add_help=False)
    judge = common.add_argument_group("judge (a different value trains and caches a different judge)")
    add_field_flags(judge, JudgeConfig.model_fields, show_default=True, extra={"train": {"metavar": "FILE"}})
    where = common.add_argument_group("where")
    where.add_argument("--dir", type=Path, help="judge folder (default: the cache folder of the options above)")
    where.add_argument(
        "--valid", nargs="+", default=DEFAULT_VALID, metavar="FILE",
        help="real held-out stories, measured beside everything scored (default: ../shared/.../valid.txt.gz)",
    )  # fmt: skip
    where.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    where.add_argument("--quiet", action="store_true", help="no progress bar")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An autoregressive judge of stories: a small GPT-2 with its own byte-level BPE "
        "vocabulary, trained on the CPU on the training stories only. It measures generated stories "
        "against real ones with a model of another family than the masked-diffusion generator.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,score}")
    train = commands.add_parser("train", parents=[common], help="train the judge (unless cached) and report it")
    train.add_argument("--force", action="store_true", help="train again even when the folder holds a judge")
    score = commands.add_parser("score", parents=[common], help="score JSONL stories beside the real ones")
    score.add_argument("stories", nargs="*", type=Path, help="JSON-lines files, one story a line")
    score.add_argument("--field", default="text", help="the JSON field holding a story (default: text)")
    score.add_argument("--json", type=Path, help="also write the report to this file")
    score.add_argument("--table", type=Path, help="also write the scores as a markdown table to this file")
    score.add_argument(
        "--control", action="store_true",
        help="also score the real stories with each one's words shuffled (seeded): word salad the judge must "
        "rank far worse than the stories, with the same words",
    )  # fmt: skip
    for sub in (train, score):
        sub.epilog, sub.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    return parser


def read_jsonl(path: Path, field: str) -> list[str]:
    """The `field` of every line of a JSON-lines file; a clear error naming the line otherwise."""
    if not path.is_file():
        raise TrainingInputError(f"stories file {str(path)!r} does not exist")
    texts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainingInputError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise TrainingInputError(f"{path}:{number}: no string field {field!r}")
        texts.append(record[field])
    if not texts:
        raise TrainingInputError(f"{path}: no stories")
    return texts


HEADER = (
    f"{'stories':<32}{'n':>5}{'judge ppl':>10}{'× real':>8}{'H pooled':>9}{'d2/story':>9}{'rep4':>7}{'words':>7}"
    f"{'<60w':>6}"
)


def row_line(name: str, s: dict[str, Any]) -> str:
    """One scored set as a table line."""
    ratio = f"{s['judge_ppl_ratio']:.3f}" if "judge_ppl_ratio" in s else "1"
    return (
        f"{name[:31]:<32}{s['stories']:>5}{s['judge_ppl']:>10.2f}{ratio:>8}{s['word_entropy_pooled']:>9.3f}"
        f"{s['distinct2_story']:>9.3f}{s['rep4']:>7.3f}{s['words']:>7.1f}{s['short']:>6.2f}"
    )


def markdown(scores: dict[str, dict[str, Any]]) -> str:
    """The scored sets as a markdown table, the real stories first."""
    out = [
        "| stories | n | judge perplexity | × real | word entropy, pooled (bits) | distinct-2 / story | "
        "repeated 4-grams | words (quartiles) | under 60 words |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, s in scores.items():
        q1, median, q3 = s["words_quartiles"]
        out.append(
            f"| {name} | {s['stories']} | {s['judge_ppl']:.2f} | {s.get('judge_ppl_ratio', 1.0):.3f} | "
            f"{s['word_entropy_pooled']:.3f} | {s['distinct2_story']:.3f} | {s['rep4']:.2%} | "
            f"{s['words']:.1f} ({q1:.0f} / {median:.0f} / {q3:.0f}) | {s['short']:.1%} |"
        )
    return "\n".join(out) + "\n"


def judge_summary(judge: Judge) -> dict[str, Any]:
    """What training measured, without the per-evaluation curve."""
    return {key: value for key, value in judge.info.items() if key != "curve"}


def run(args: argparse.Namespace) -> int:
    """Train or score, as parsed."""
    import datasets
    import torch

    from model_training.judge.train import ensure_judge, save_atomically, train_judge

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()  # reading a few MB of stories needs no bar; training has its own
    cfg = JudgeConfig(**given_fields(args, JudgeConfig.model_fields))
    folder = args.dir or cache_dir(cfg)
    named = {str(p): read_jsonl(p, args.field) for p in getattr(args, "stories", [])}  # bad files fail first
    missing = [f for f in args.valid if not Path(f).is_file()]
    if missing:
        raise TrainingInputError(f"validation file {missing[0]!r} does not exist (--valid)")
    if args.command == "train" and args.force:
        save_atomically(train_judge(cfg, args.valid, not args.quiet), folder)
    judge = ensure_judge(cfg, folder, args.valid, not args.quiet)
    info = judge_summary(judge)
    print(f"judge {folder}: {info['parameters']:,} parameters, best step {info['best_step']}, "
          f"dev perplexity {info['dev_ppl']:.3f}", end="")  # fmt: skip
    print(f", held-out {info['valid']['ppl']:.3f} on {info['valid']['stories']} stories" if "valid" in info else "")
    return 0 if args.command == "train" else score(args, judge, named)


def score(args: argparse.Namespace, judge: Judge, named: dict[str, list[str]]) -> int:
    """Score the named sets (and the control, if asked) beside the real stories; print and write them."""
    from model_training.judge.score import compare, shuffled_words
    from model_training.judge.train import read_stories

    real = read_stories(args.valid)
    if args.control:
        named = named | {CONTROL: [shuffled_words(text, seed) for seed, text in enumerate(real)]}
    scores = compare(named, real, judge)
    shown = {f"real: {', '.join(Path(f).name for f in args.valid)}": scores["reference"]}
    shown |= {Path(name).name: scores[name] for name in named}
    print(HEADER)
    for name, row in shown.items():
        print(row_line(name, row))
    if args.json:
        report = {"judge": judge_summary(judge), "valid_files": [Path(f).name for f in args.valid], **scores}
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.table:
        args.table.write_text(markdown(shown))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 2 (one line on stderr) on bad input."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (TrainingInputError, ValidationError, FileNotFoundError, ValueError) as err:
        message = error_line(err) if isinstance(err, ValidationError) else str(err).splitlines()[0]
        print(f"error: {message}", file=sys.stderr)
        return 2
