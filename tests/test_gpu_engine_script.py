"""scripts/gpu_engine_bench.sh, the one prepared GPU run, rehearsed on the CPU (ALLOW_CPU=1 QUICK=1, a tiny
model) so that it cannot break unseen: every phase runs and reports what the GPU run must report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.diffusion.checkpoint import save_checkpoint
from app.diffusion.diffusion_config import DiffusionConfig
from app.diffusion.sampler_settings import SamplerOverrides
from tests.conftest import tiny_distilbert

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, cased_tokenizer) -> Path:
    """Stories of 16 tokens in 4 steps: the rehearsal's sizes."""
    config = DiffusionConfig(seq_len=16, sampler=SamplerOverrides(steps=4), trained_on="nothing: random weights")
    directory = tmp_path_factory.mktemp("short-model")
    return save_checkpoint(directory, tiny_distilbert(len(cased_tokenizer)), cased_tokenizer, config)


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_every_phase_runs_on_the_cpu_and_reports_what_the_gpu_run_needs(tmp_path, short_model):
    env = {**os.environ, "OUT": str(tmp_path), "ALLOW_CPU": "1", "QUICK": "1", "WHEELS": "none"}
    env |= {"MODEL_DIR": str(short_model), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]  # `python3`: this interpreter
    done = subprocess.run(["bash", "scripts/gpu_engine_bench.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "bench.log").read_text()
    for phase in ("syncs", "stub", "compiled", "eager", "http"):
        assert f"== {phase} exited 0" in log, log[-3000:]
    syncs = (tmp_path / "syncs.txt").read_text()
    assert "shipped defaults" in syncs and "worst: 1 per advance" in syncs, syncs

    compiled = json.loads((tmp_path / "compiled.json").read_text())
    model = compiled["models"]["default"]
    assert model["warm_up_s"] > 0 and model["split"] == "0 compiled, 0 eager"  # the CPU runs eagerly
    rows = {(row["mode"], row["concurrency"]): row for row in compiled["rows"]}
    assert set(rows) == {("reference", 1), ("engine", 1), ("engine", 8)}, "the reference beside the engine"
    for row in rows.values():
        assert {"stories_per_s", "tokens_per_s", "ttfs_p50_ms", "ttfs_p95_ms", "forwards_per_story"} <= set(row)
    assert rows[("engine", 8)]["stories"] == 8 and rows[("engine", 8)]["errors"] == 0

    server = json.loads((tmp_path / "http.json").read_text())["models"]["default"]["server"]
    assert server["warm_up_s"] > 0 and server["split"] == "0 compiled, 0 eager"
