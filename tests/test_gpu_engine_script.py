"""scripts/gpu_engine_bench.sh, the one prepared GPU run, rehearsed on the CPU (ALLOW_CPU=1 QUICK=1) so
that it cannot break unseen: here its host-sync phase, which must report one copy per iteration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_sync_phase_runs_on_the_cpu_and_counts_one_copy(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "ALLOW_CPU": "1", "QUICK": "1", "PHASES": "syncs", "WHEELS": "none"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(["bash", "scripts/gpu_engine_bench.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (tmp_path / "syncs.txt").read_text()
    assert "== syncs exited 0" in (tmp_path / "bench.log").read_text()
    assert "shipped defaults" in report and "worst: 1 per advance" in report, report
