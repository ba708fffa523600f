"""docs/judge.md quotes docs/judge.json, which the committed command wrote for the default judge."""

from __future__ import annotations

import json
from pathlib import Path

from model_training.judge import JudgeConfig
from model_training.judge.cli import markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_report_is_of_the_default_judge_and_the_table_renders_it():
    report = json.loads((DOCS / "judge.json").read_text())
    default = JudgeConfig().model_dump(mode="json")
    assert report["judge"]["config"] == default | {"train": [Path(f).name for f in default["train"]]}
    sets = {f"real: {', '.join(report['valid_files'])}": report["reference"]}
    sets |= {name: row for name, row in report.items() if name.startswith("control")}
    assert (DOCS / "judge-table.md").read_text() == markdown(sets)


def test_the_page_quotes_the_report():
    report = json.loads((DOCS / "judge.json").read_text())
    page = " ".join((DOCS / "judge.md").read_text().split())
    judge, real = report["judge"], report["reference"]
    control = report["control: real, words shuffled"]
    quoted = [
        f"**{judge['valid']['ppl']:.2f}** per judge token (dev {judge['dev_ppl']:.2f})",
        f"tied embeddings: {judge['parameters']:,} parameters",
        f"(here step {judge['best_step']}, dev perplexity {judge['dev_ppl']:.2f})",
        f"finds it {control['judge_ppl_ratio']:.1f} times as perplexing",
        f"word entropy {real['word_entropy_pooled']:.3f} bits pooled, "
        f"distinct-2 {real['distinct2_story']:.3f} a story, {real['words']:.1f} words on average",
        f"against {judge['dev_ppl']:.2f} and {judge['valid']['ppl']:.2f} for the default",
    ]
    assert [figure for figure in quoted if figure not in page] == []
    assert " ".join((DOCS / "judge-table.md").read_text().split()) in page  # the table, as the command wrote it
    assert "python -m model_training.judge score --control --json docs/judge.json --table docs/judge-table.md" in page
