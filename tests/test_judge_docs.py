"""docs/judge.md quotes docs/judge.json, which the committed command wrote for the default judge."""

from __future__ import annotations

import json
import re
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
    page = (DOCS / "judge.md").read_text()
    judge, real = report["judge"], report["reference"]
    quoted = {
        f"{judge['valid']['ppl']:.2f}", f"{judge['dev_ppl']:.2f}", f"{judge['parameters']:,}",
        f"{real['word_entropy_pooled']:.3f}", f"{real['distinct2_story']:.3f}", f"{real['words']:.1f}",
    }  # fmt: skip
    assert all(figure in page for figure in quoted), [figure for figure in quoted if figure not in page]
    assert (DOCS / "judge-table.md").read_text() in page  # the table, as the command wrote it
    assert re.search(r"python -m model_training\.judge score --control --json docs/judge\.json", page)
