"""benchmarks/cpu_speed.py --quick on a tiny random model: it runs every backend at both presets and prints
the table's columns (no speed asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "cpu_speed.py"
COLUMNS = ("s/story", "x eager", "C stories/s", "AR ppl", "dppl", "dH", "dist2", "rep4", "words", "same", "RSS MiB")


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("cpu_speed", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_quick_run_prints_a_row_per_backend_and_preset(benchmark, tiny_checkpoint_dir, tiny_judge_dir, capsys):
    argv = ["--quick", "--threads", "1", "--model", str(tiny_checkpoint_dir), "--judge", str(tiny_judge_dir)]
    rows = benchmark.main(argv)
    assert [(row["preset"], row["backend"]) for row in rows] == [
        (preset, backend) for preset in ("default", "fast") for backend in ("eager", "onnx", "onnx-int8", "openvino")
    ]
    for row in rows:
        assert row["s_per_story"] > 0 and row["stories_per_s"] > 0 and row["rss_mib"] > 0
        assert row["ar_ppl"] > 1 and row["words"] > 0
    eager, onnx = rows[0], rows[1]
    assert eager["speedup"] == 1 and eager["ppl_change"] == 0 and eager["same"] == 2
    assert onnx["same"] == 2  # fp32 in ONNX Runtime writes eager's stories
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("preset"))
    assert all(column in header for column in COLUMNS)
    table = [line for line in lines if line.split()[:1] in (["default"], ["fast"])]
    assert len(table) == 8 and all(len(line.split()) == len(lines[lines.index(header) + 1].split()) for line in table)


def test_kv_refresh_adds_a_row_per_k_run_one_at_a_time_only(benchmark, tiny_checkpoint_dir, capsys):
    """kv-K rows (key/value reuse) write a story each, fresh per story, and leave the engine column empty."""
    argv = ["--quick", "--threads", "1", "--model", str(tiny_checkpoint_dir), "--judge", "none"]
    rows = benchmark.main([*argv, "--backends", "eager", "--presets", "default", "--kv-refresh", "1,4"])
    _, exact, reusing = rows
    assert (exact["backend"], reusing["backend"]) == ("kv-1", "kv-4")
    assert exact["same"] == 2  # a full pass every forward is the exact forward: eager's stories
    assert exact["stories_per_s"] is None and exact["concurrent_speedup"] is None
    assert "keys and values reused (full pass every 4)" in reusing["forward"]
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("default")]
    assert [cells[1] for cells in table] == ["eager", "kv-1", "kv-4"] and len({len(c) for c in table}) == 1


def test_kv_refresh_must_be_whole_numbers_from_1(benchmark, capsys):
    for bad in ("0", "four"):
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--kv-refresh", bad])
    assert "--kv-refresh" in capsys.readouterr().err


def test_unknown_backend_is_a_usage_error(benchmark, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--backends", "eager,tensorrt"])
    assert "--backends: unknown tensorrt" in capsys.readouterr().err
