"""Optional API keys, CORS, the page's security headers, and the compose file's default binding."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from app.api.routes import OPEN_ROUTES
from app.api.security import ApiKeys
from app.config import Settings
from tests.support.containers import COMPOSE, compose_config
from tests.support.service import Service, settings_for

pytestmark = pytest.mark.anyio

KEYS = "first-key,second-key"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
async def keyed(tiny_checkpoint_dir):
    async with Service(settings_for(tiny_checkpoint_dir, api_keys=KEYS)) as client:
        yield client


def test_keys_come_comma_separated_or_as_a_list(monkeypatch):
    monkeypatch.setenv("STORYDIFF_API_KEYS", " a, b ,")
    monkeypatch.setenv("STORYDIFF_CORS_ORIGINS", '["https://a.example"]')
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == ["a", "b"]
    assert settings.cors_origins == ["https://a.example"]
    assert "a" not in repr(settings.api_keys)  # secrets stay out of logs


def test_keys_match_exactly():
    keys = ApiKeys([SecretStr("sesame"), SecretStr("other")])
    assert keys.required and keys.accepts("sesame") and keys.accepts("other")
    assert not any(keys.accepts(token) for token in ("sesam", "sesame ", "SESAME", "", "sesameother"))
    assert not ApiKeys([]).required


@pytest.mark.parametrize(("method", "path"), [("POST", "/generate"), ("GET", "/info"), ("GET", "/metrics")])
async def test_protected_routes_need_a_known_key(keyed, method, path):
    body = {"json": {"length": 8, "steps": 2}} if method == "POST" else {}
    missing = await keyed.request(method, path, **body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = await keyed.request(method, path, headers=bearer("third-key"), **body)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    for key in KEYS.split(","):
        assert (await keyed.request(method, path, headers=bearer(key), **body)).status_code == 200


async def test_probes_and_the_page_stay_open(keyed):
    for path in ("/health", "/ready", "/", "/static/app.js"):
        assert (await keyed.get(path)).status_code == 200, path
    metrics = (await keyed.get("/metrics", headers=bearer("first-key"))).text
    assert 'storydiff_refused_requests_total{reason="unauthorized"}' in metrics


async def test_the_api_docs_need_the_key_as_docs_operations_md_says(keyed):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await keyed.get(path)).status_code == 401, path
        assert (await keyed.get(path, headers=bearer("first-key"))).status_code == 200, path


async def test_the_key_is_checked_before_the_body_is_parsed(keyed):
    broken, as_json = b'{"length": ', {"content-type": "application/json"}
    assert (await keyed.post("/generate", content=broken, headers=as_json)).status_code == 401
    keyed_json = {**as_json, **bearer("first-key")}
    assert (await keyed.post("/generate", content=broken, headers=keyed_json)).status_code == 422


async def test_the_schema_declares_the_key_exactly_where_the_server_asks_for_it(keyed):
    schema = (await keyed.get("/openapi.json", headers=bearer("first-key"))).json()
    declared = {
        (path, method): "security" in operation
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    for (path, method), needs_key in declared.items():
        answer = await keyed.request(method, re.sub(r"{[^}]+}", "x" * 22, path))
        assert needs_key == (answer.status_code == 401), (method, path, answer.status_code)
    assert not declared[("/health", "get")] and not declared[("/ready", "get")] and declared[("/generate", "post")]


async def test_every_route_is_closed_unless_named_open(tiny_checkpoint_dir):
    """A route added later needs a key without anyone remembering to ask for one."""
    async with Service(settings_for(tiny_checkpoint_dir, api_keys=KEYS)) as client:
        paths = (await client.get("/openapi.json", headers=bearer("first-key"))).json()["paths"]
        closed = {path: methods for path, methods in paths.items() if path not in OPEN_ROUTES}
        assert {"/generate", "/info", "/metrics"} <= set(closed)
        for path, methods in closed.items():
            for method in methods:
                response = await client.request(method, re.sub(r"{[^}]+}", "x", path))
                assert response.status_code == 401, (method, path, response.status_code)


async def test_metrics_can_stay_open(tiny_checkpoint_dir):
    async with Service(settings_for(tiny_checkpoint_dir, api_keys=KEYS, metrics_need_key=False)) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/info")).status_code == 401


async def test_without_keys_nothing_asks_for_one(tiny_checkpoint_dir):
    async with Service(settings_for(tiny_checkpoint_dir)) as client:
        assert (await client.get("/info")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_cors_is_off_unless_origins_are_set(tiny_checkpoint_dir):
    preflight = {"origin": "https://stories.example", "access-control-request-method": "POST"}
    async with Service(settings_for(tiny_checkpoint_dir)) as closed:
        assert "access-control-allow-origin" not in (await closed.options("/generate", headers=preflight)).headers
        assert "access-control-allow-origin" not in (await closed.get("/health", headers=preflight)).headers
    origins = "https://stories.example"
    async with Service(settings_for(tiny_checkpoint_dir, cors_origins=origins)) as open_to_one:
        allowed = await open_to_one.options("/generate", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://stories.example"
        other = await open_to_one.options("/generate", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_the_page_has_a_content_security_policy(keyed):
    page = await keyed.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "style=" not in page.text and "<script>" not in page.text  # nothing inline for the policy to block
    assert (await keyed.get("/static/api.js")).headers["x-content-type-options"] == "nosniff"


def test_compose_publishes_on_this_machine_only_by_default():
    ports = compose_config(COMPOSE)["services"]["server"]["ports"]
    assert [port["host_ip"] for port in ports] == ["127.0.0.1"]
    exposed = compose_config(COMPOSE, STORYDIFF_PUBLISH_ADDRESS="0.0.0.0")
    assert [port["host_ip"] for port in exposed["services"]["server"]["ports"]] == ["0.0.0.0"]
