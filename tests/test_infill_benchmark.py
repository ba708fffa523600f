"""benchmarks/infill_quality.py on a tiny model: it blanks the middle third, keeps the rest, and reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from app.diffusion.checkpoint import load_checkpoint

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "infill_quality.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("infill_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_infills_only_the_middle_third(tiny_checkpoint_dir, tmp_path, monkeypatch, capsys):
    infill_quality = load_benchmark()
    out = tmp_path / "infill.json"
    model = str(tiny_checkpoint_dir)
    argv = ["infill_quality", "--model", model, "--judge", model, "--limit", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--t-samples", "1", "--threads", "1", "--json", str(out)])
    infill_quality.main()
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["original", "infilled", "infilled, end not pinned", "unconstrained"]
    assert "judge bits/char" in capsys.readouterr().out

    ckpt = load_checkpoint(model, device="cpu")
    texts = infill_quality.held_out_stories(infill_quality.HELD_OUT)[:3]
    stories = [infill_quality.encode(ckpt, text) for text in texts]
    infilled = rows["infilled"]["written"]
    for story, written in zip(stories, infilled, strict=True):
        a, b = story.middle
        assert written["tokens"][:a] == list(story.tokens[:a]) and written["tokens"][b:] == list(story.tokens[b:])
        assert written["tokens"][a:b] != list(story.tokens[a:b])  # random weights: the middle was rewritten
        assert ckpt.mask_id not in written["tokens"]
    unconstrained = rows["unconstrained"]["written"]
    assert all(len(s["tokens"]) == len(story.tokens) for s, story in zip(unconstrained, stories, strict=True))
    assert [len(s["tokens"]) for s in rows["infilled, end not pinned"]["written"]] == [s.body[1] for s in stories]

    out.write_text(json.dumps({**report, "rows": report["rows"][:2]}))  # as if stopped after two rows
    monkeypatch.setattr(sys, "argv", [*argv, "--t-samples", "1", "--json", str(out), "--resume"])
    infill_quality.main()
    resumed = json.loads(out.read_text())["rows"]
    assert resumed[:2] == report["rows"][:2] and [row["name"] for row in resumed][2:] == list(rows)[2:]
