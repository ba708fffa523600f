"""A plugin of tests/conftest.py: at the end of a run, how many tests passed, failed and skipped per marker.

So a reader of a CI log sees that the Docker and browser tests ran rather than skipped. A test counts
under each of its markers (a Docker test is also `slow`); `rest` is every test with none of them.
"""

from __future__ import annotations

from collections import Counter

import pytest

MARKERS = ("docker", "browser", "gpu", "slow")
OUTCOMES = ("passed", "failed", "skipped")
_outcomes: dict[str, tuple[str, tuple[str, ...]]] = {}  # nodeid -> (outcome, its markers)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test's outcome: a failure in any phase, else a skip, else its call's pass."""
    markers = tuple(m for m in MARKERS if m in report.keywords) or ("rest",)
    earlier = _outcomes.get(report.nodeid, ("passed", markers))[0]
    if report.failed or earlier == "failed":
        outcome = "failed"
    elif report.skipped or earlier == "skipped":
        outcome = "skipped"
    elif report.when == "call":
        outcome = "passed"
    else:
        return  # a passing setup or teardown says nothing yet
    _outcomes[report.nodeid] = (outcome, markers)


def summary_rows() -> list[str]:
    """One aligned line per marker that ran: `docker   passed 7  failed 0  skipped 0`."""
    counts = {marker: Counter[str]() for marker in (*MARKERS, "rest")}
    for outcome, markers in _outcomes.values():
        for marker in markers:
            counts[marker][outcome] += 1
    return [
        f"{marker:<8} " + "  ".join(f"{name} {count[name]}" for name in OUTCOMES)
        for marker, count in counts.items()
        if count
    ]


def pytest_terminal_summary(terminalreporter) -> None:
    if _outcomes:
        terminalreporter.section("tests by marker")
        for row in summary_rows():
            terminalreporter.write_line(row)
