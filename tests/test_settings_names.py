"""Durations are named in seconds (`_s`); their old names still work as keywords, environment variables
and `storydiff serve` flags, each use logging a deprecation line."""

from __future__ import annotations

import argparse
import logging

import pytest

from app.config import RENAMED, Settings
from app.serve_cli import add_serve_arguments, settings_from_args


def parser() -> argparse.ArgumentParser:
    parsing = argparse.ArgumentParser(prog="storydiff serve")
    add_serve_arguments(parsing)
    return parsing


def deprecations(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "deprecated" in record.getMessage()]


def test_every_duration_setting_is_named_in_seconds():
    durations = [name for name, info in Settings.model_fields.items() if "seconds" in (info.description or "").lower()]
    assert len(durations) >= len(RENAMED) and all(name.endswith("_s") for name in durations), durations


def test_an_old_keyword_sets_the_new_field_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="app.config"):
        settings = Settings(timeout=5, resume_grace=2, shutdown_grace_s=1)
    assert (settings.timeout_s, settings.resume_grace_s, settings.shutdown_grace_s) == (5, 2, 1)
    assert deprecations(caplog) == [
        "timeout is deprecated: use timeout_s (same value, in seconds)",
        "resume_grace is deprecated: use resume_grace_s (same value, in seconds)",
    ]
    assert settings.timeout == 5, "the old attribute reads the new field"


def test_an_old_environment_variable_works_below_the_new_one(caplog, monkeypatch):
    monkeypatch.setenv("STORYDIFF_SHUTDOWN_GRACE", "3")
    monkeypatch.setenv("STORYDIFF_PING_INTERVAL_S", "4")
    with caplog.at_level(logging.WARNING, logger="app.config"):
        assert (Settings().shutdown_grace_s, Settings().ping_interval_s) == (3, 4)
    assert "STORYDIFF_SHUTDOWN_GRACE is deprecated: use STORYDIFF_SHUTDOWN_GRACE_S" in deprecations(caplog)[0]
    monkeypatch.setenv("STORYDIFF_SHUTDOWN_GRACE_S", "6")
    assert Settings().shutdown_grace_s == 6, "the new name wins"


@pytest.mark.parametrize(
    ("old", "new"), [("--send-timeout", "send_timeout_s"), ("--header-timeout", "header_timeout_s")]
)
def test_an_old_flag_sets_the_new_field_and_says_so(caplog, old, new):
    with caplog.at_level(logging.WARNING, logger="app.config"):
        settings = settings_from_args(parser().parse_args([old, "7"]))
    assert getattr(settings, new) == 7
    assert deprecations(caplog) == [f"{old} is deprecated: use {old}-s (same value, in seconds)"]


def test_help_shows_only_the_new_flags():
    shown = parser().format_help()
    assert "--shutdown-grace-s" in shown and "--shutdown-grace " not in shown and "--timeout " not in shown
