"""Requests generated from the OpenAPI schema (schemathesis) against a real server: never a 5xx.

Valid and invalid requests, a bounded number per operation, keep it under a minute on two CPU cores;
`STORYDIFF_SCHEMATHESIS_EXAMPLES=500 pytest tests/test_schemathesis.py` looks harder. (Hypothesis is
driven directly: schemathesis' own pytest fixture loader does not run under pytest 9.)
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import running_server
from tests.support.service import settings_for

EXAMPLES = int(os.environ.get("STORYDIFF_SCHEMATHESIS_EXAMPLES", "12"))
INPUTS = {"parameters", "requestBody", "security"}
"""What an invalid request can get wrong; an operation with none has no invalid request."""


@pytest.fixture(scope="module")
def api_schema(tiny_checkpoint_dir):
    with running_server(settings_for(tiny_checkpoint_dir, port=0)) as (url, _):
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_request_gets_a_server_error(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"POST /generate", "GET /info"} <= {operation.label for operation in operations}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not INPUTS & set(operation.definition.raw):
            continue  # /health, /ready: no parameter, body or key to send wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,  # no .hypothesis/ directory in the repository
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        no_server_error()
