"""benchmarks/engine_throughput.py on a tiny random model: it runs and reports every column (no speed asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "engine_throughput.py"
STORY_COLUMNS = (
    "stories",
    "wall_s",
    "stories_per_s",
    "tokens_per_s",
    "ttfs_p50_ms",
    "ttfs_p99_ms",
    "done_p50_s",
    "done_p99_s",
    "iterations",
    "forward_calls",
    "forwards_per_story",
    "seqs_per_forward",
    "iter_ms",
)
FORWARD_COLUMNS = ("forward_s", "forward_ms_per_iter", "overhead_ms_per_iter", "overhead_pct")
HTTP_COLUMNS = ("complete", "rss_before_mib", "rss_after_mib")


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("engine_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run(benchmark, tiny_checkpoint_dir, tmp_path, *extra: str) -> dict:
    """The benchmark's main on the tiny model at C = 1 and 3, one round; its --json file must be its report."""
    out = tmp_path / "engine.json"
    options = {
        **{"--device": "cpu", "--threads": "1", "--models": "default", "--model-dir": str(tiny_checkpoint_dir)},
        **{"--concurrency": "1,3", "--rounds": "1", "--json": str(out)},
    }
    report = benchmark.main([*(part for flag in options.items() for part in flag), *extra])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))  # the file is the report
    return report


def assert_positive(row: dict, columns: tuple[str, ...]) -> None:
    missing = [name for name in columns if name not in row]
    assert not missing, f"{row['mode']} row lacks {missing}"
    assert all(row[name] > 0 for name in columns), {name: row[name] for name in columns}


def test_reference_and_engine_rows_report_every_column(benchmark, tiny_checkpoint_dir, tmp_path, capsys):
    report = run(benchmark, tiny_checkpoint_dir, tmp_path, "--reference-stories", "1")
    assert report["device"].startswith("cpu") and report["torch"] and report["wall_s"] > 0
    assert report["models"]["default"]["length"] == 48
    assert report["models"]["default"]["forward"].startswith("eager")  # the service's forward on a CPU
    (reference,) = [row for row in report["rows"] if row["mode"] == "reference"]
    assert_positive(reference, (*STORY_COLUMNS, *FORWARD_COLUMNS, "s_per_story"))
    assert reference["forwards_per_story"] == reference["steps"] == reference["length"]  # a full forward a step
    engine = [row for row in report["rows"] if row["mode"] == "engine"]
    assert [row["concurrency"] for row in engine] == [1, 3]
    for row in engine:
        assert_positive(row, (*STORY_COLUMNS, *FORWARD_COLUMNS))
        assert row["stories"] == row["concurrency"] and row["errors"] == 0
    assert engine[1]["seqs_per_forward"] > 1  # the three shared forward passes
    printed = capsys.readouterr().out
    assert "stories/s" in printed and printed.count("\ndefault ") == 3  # a table line per row


def test_stub_mode_times_the_engine_without_the_model(benchmark, tiny_checkpoint_dir, tmp_path):
    report = run(benchmark, tiny_checkpoint_dir, tmp_path, "--stub")
    assert [row["mode"] for row in report["rows"]] == ["stub", "stub"]
    for row in report["rows"]:
        assert_positive(row, (*STORY_COLUMNS, *FORWARD_COLUMNS))


def test_http_mode_streams_through_a_real_server(benchmark, tiny_checkpoint_dir, tmp_path):
    report = run(benchmark, tiny_checkpoint_dir, tmp_path, "--reference-stories", "0", "--http")
    http = [row for row in report["rows"] if row["mode"] == "http"]
    assert [row["concurrency"] for row in http] == [1, 3]
    for row in http:
        assert_positive(row, (*STORY_COLUMNS, *HTTP_COLUMNS))
        assert row["complete"] == row["concurrency"] and row["rejected_429"] == row["errors"] == 0
