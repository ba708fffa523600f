"""The CI rules themselves: a missing real component fails where CI=true and skips elsewhere, the run
ends with counts per marker, and .ci/setup-docker.sh stops CI when it cannot set Docker up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.containers import compose_hint

ROOT = Path(__file__).resolve().parent.parent
CASES = """
import pytest
from tests.support.components import require_component

@pytest.mark.docker
def test_needs_a_widget():
    require_component("no widget at /nowhere", "install the widget")

@pytest.mark.browser
@pytest.mark.slow
def test_runs():
    pass

@pytest.mark.gpu
def test_skips_without_cuda():
    pytest.skip("needs CUDA")

def test_plain():
    pass
"""


def run_cases(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """CASES through pytest in a fresh process, with this repository's marker-summary plugin."""
    (tmp_path / "test_cases.py").write_text(CASES)
    settings = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)} | env
    command = [sys.executable, "-m", "pytest", "-p", "tests.support.marker_summary", "-p", "no:cacheprovider"]
    command += ["-rs", "-o", "markers=docker\nbrowser\ngpu\nslow", str(tmp_path / "test_cases.py")]
    return subprocess.run(command, cwd=tmp_path, env=settings, capture_output=True, text=True, timeout=120)


def test_a_missing_component_fails_in_ci_with_its_reason(tmp_path):
    done = run_cases(tmp_path, CI="true")
    assert done.returncode == 1, done.stdout
    assert "no widget at /nowhere (CI=true: a missing component fails the run; install the widget)" in done.stdout
    assert "1 failed, 2 passed, 1 skipped" in done.stdout


def test_outside_ci_it_skips_saying_how_to_enable_it(tmp_path):
    done = run_cases(tmp_path)
    assert done.returncode == 0, done.stdout
    assert "no widget at /nowhere: install the widget (with CI=true this is a failure)" in done.stdout
    assert "2 passed, 2 skipped" in done.stdout


def test_the_run_ends_with_counts_per_marker(tmp_path):
    lines = run_cases(tmp_path, CI="true").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "tests by marker" in line)
    assert lines[start + 1 : start + 6] == [
        "docker   passed 0  failed 1  skipped 0",
        "browser  passed 1  failed 0  skipped 0",
        "gpu      passed 0  failed 0  skipped 1",
        "slow     passed 1  failed 0  skipped 0",
        "rest     passed 1  failed 0  skipped 0",
    ]


def test_on_python_3_10_the_compose_hint_names_no_pip_install():
    assert "pip install" in compose_hint((3, 11, 7))
    old = compose_hint((3, 10, 14))
    assert "pip install" not in old and "needs Python >= 3.11" in old and "compose plugin" in old


def test_setup_docker_fails_without_its_base_script(tmp_path):
    (tmp_path / "repo" / ".ci").mkdir(parents=True)  # and no ../shared/docker/local-base.sh beside it
    shutil.copy(ROOT / ".ci" / "setup-docker.sh", tmp_path / "repo" / ".ci")
    done = subprocess.run(["bash", str(tmp_path / "repo" / ".ci" / "setup-docker.sh")], capture_output=True, text=True)
    assert done.returncode != 0
    assert "local-base.sh not found" in done.stderr
