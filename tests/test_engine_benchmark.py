"""benchmarks/engine_throughput.py on a tiny random model: it runs and reports every column (no speed
asserted). And docs/benchmarks.md's engine figures are what their commands write: each engine_throughput
table is its committed JSON rendered, and each command shown with its output, re-run in a reduced
form, still writes the same columns."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "engine_throughput.py"
DOCS = ROOT / "docs" / "benchmarks.md"
GENERATED = re.compile(r"^`python benchmarks/engine_throughput\.py (?P<argv>[^`]+)`: [^\n]*\n\n(?:\|[^\n]*\n)+", re.M)
"""A table that `--table` wrote, pasted whole: its caption (the command, the machine) and its rows."""
SHOWN = re.compile(
    r"^```text\n\$ python (?P<script>benchmarks/\w+\.py)(?P<argv>[^\n]*)\n(?P<output>.*?)^```", re.M | re.S
)
"""A command shown with its output, pasted whole from the terminal."""
REDUCED = {  # script -> options appended to its documented command: the same lines, in seconds
    "benchmarks/engine_overhead.py": ["--rows", "1", "--iterations", "1"],
    "benchmarks/mixed_lengths.py": ["--short", "4", "--long", "8"],
}
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
    assert report["models"]["default"]["forward"] == "eager"  # --cpu-backend's default: the documented tables' forward
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


def documented_runs() -> list[tuple[list[str], str]]:
    """Each engine_throughput table of docs/benchmarks.md: the arguments of its command and the block as written."""
    return [(shlex.split(match["argv"]), match[0]) for match in GENERATED.finditer(DOCS.read_text())]


def option(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # the last one, as argparse takes it


def test_the_docs_tables_are_the_committed_reports_rendered(benchmark):
    runs = documented_runs()
    assert {"--stub" in argv for argv, _ in runs} == {True, False}, "the stub table and the --quick table"
    for argv, block in runs:
        report = json.loads((ROOT / option(argv, "--json")).read_text())
        assert report["argv"] == argv, "the JSON is not that command's"
        assert benchmark.markdown(report) == block, f"docs/benchmarks.md's table differs from {option(argv, '--json')}"


def cells(table: str) -> tuple[list[str], list[list[str]]]:
    """A Markdown table's header and rows, as cells."""
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")
    ]
    return rows[0], rows[2:]


@pytest.mark.slow
@pytest.mark.parametrize("stub", [True, False], ids=["stub", "quick"])
def test_each_documented_command_still_writes_the_docs_columns(benchmark, tiny_checkpoint_dir, tmp_path, stub):
    (argv, block), *_ = [(argv, block) for argv, block in documented_runs() if ("--stub" in argv) == stub]
    reduced = [*argv, "--json", str(tmp_path / "run.json"), "--table", str(tmp_path / "run.md")]
    reduced += ["--concurrency", "1,2", "--rounds", "1"]
    if not stub:  # the stub needs the shipped model's small token ids (vocabulary 64); the engine runs a tiny one
        reduced += ["--model-dir", str(tiny_checkpoint_dir), "--reference-stories", "1"]
    benchmark.main(reduced)
    (header, rows), (documented_header, documented_rows) = cells((tmp_path / "run.md").read_text()), cells(block)
    if stub:  # the same settings by the same vocabularies (the first header cell names the levels run)
        assert header[1:] == documented_header[1:]
        assert [row[0] for row in rows] == [row[0] for row in documented_rows]
    else:  # the same columns, and the reference beside the engine
        assert header == documented_header
        mode = header.index("mode")
        assert {row[mode] for row in rows} == {row[mode] for row in documented_rows} == {"reference", "engine"}


def line_shapes(output: str) -> set[str]:
    """The kinds of line a benchmark prints: each line with its numbers as N and its spacing collapsed."""
    shapes = (re.sub(r"\s+", " ", re.sub(r"\d+(\.\d+)?", "N", line)).strip() for line in output.splitlines())
    return {shape for shape in shapes if shape and not shape.startswith("Loading weights")}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(REDUCED))
def test_each_command_shown_with_its_output_still_prints_those_lines(script):
    shown = [match for match in SHOWN.finditer(DOCS.read_text()) if match["script"] == script]
    assert shown, f"docs/benchmarks.md shows no run of {script}"
    for match in shown:
        command = [sys.executable, script, *shlex.split(match["argv"]), *REDUCED[script]]
        env = os.environ | {"PYTHONPATH": str(ROOT)}  # the `app` of this checkout, whatever is installed
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert line_shapes(done.stdout) == line_shapes(match["output"]), (done.stdout, match["output"])
