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
        (preset, backend) for preset in ("default", "fast") for backend in ("eager", "onnx", "onnx-int8")
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
    assert len(table) == 6 and all(len(line.split()) == len(lines[lines.index(header) + 1].split()) for line in table)


def test_unknown_backend_is_a_usage_error(benchmark, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--backends", "eager,tensorrt"])
    assert "--backends: unknown tensorrt" in capsys.readouterr().err
