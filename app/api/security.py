"""Who may call the API: optional bearer API keys, CORS, and the page's security headers.

The auth surface is declared once, where routes are routed: the paths of `app.api.routes.public`
(plus /metrics where `metrics_need_key` is off), handed to `install_security` as an `AuthSurface`.
`ApiKeyGate` checks every other path, and `declare_security` marks every
other operation of the OpenAPI schema as needing the bearer key, so code, schema and
docs/operations.md say the same. The gate is an ASGI middleware outside the body limits, so a
request without a valid key is refused before its body is read or parsed (malformed JSON without a
key is a 401, not a 422). /docs, /redoc and /openapi.json are not open: with keys set they need one
too (`curl -H "Authorization: Bearer KEY" .../openapi.json`)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.refusals import Refusals
from app.config import Settings

NOSNIFF = {"X-Content-Type-Options": "nosniff"}
"""Browsers take a file for what its Content-Type says, never for what its bytes look like."""

PAGE_HEADERS = {
    # The page is self-hosted modules and one stylesheet: no inline script or style, no other origin.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    **NOSNIFF,
}
"""Headers of GET /: what the page may load and run, and that no other site may frame it."""

SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "`Authorization: Bearer KEY`, one of the server's STORYDIFF_API_KEYS; only when it has any.",
}
SCHEME_NAME = "api_key"


@dataclass(frozen=True)
class AuthSurface:
    """Which paths are served without a key: `open_paths` exactly, or below one of them (a mounted
    directory such as /static); /metrics too where `metrics_open`. Every other path needs a key."""

    open_paths: frozenset[str]
    metrics_open: bool

    def is_open(self, path: str) -> bool:
        """Whether `path` is served without a key: the one rule the gate and the schema share."""
        if path in self.open_paths or any(path.startswith(f"{p}/") for p in self.open_paths if p != "/"):
            return True
        return path == "/metrics" and self.metrics_open


class ApiKeys:
    """The keys a server accepts, compared in constant time (as SHA-256 digests, so lengths leak nothing)."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._digests = [_digest(key.get_secret_value()) for key in keys]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: str) -> bool:
        digest = _digest(token)
        matched = False
        for known in self._digests:  # every key compared, whichever matches
            matched |= hmac.compare_digest(digest, known)
        return matched


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class ApiKeyGate:
    """401 with `WWW-Authenticate: Bearer` for any path but the open ones, unless the server needs no
    key or the request has one it knows; before anything reads the body. A new route is closed until
    it is routed on `app.api.routes.public`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, surface: AuthSurface, refusals: Refusals) -> None:
        self.app, self.keys, self.surface, self.refusals = app, keys, surface, refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.required or self.surface.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is not None and self.keys.accepts(token):
            await self.app(scope, receive, send)
            return
        self.refusals.count("unauthorized")
        if token is None:
            detail, challenge = "this server needs an API key: send 'Authorization: Bearer KEY'", "Bearer"
        else:
            detail, challenge = "the API key is not valid", 'Bearer error="invalid_token"'
        body = json.dumps(_unauthorized(scope["path"], detail)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge.encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _unauthorized(path: str, detail: str) -> dict[str, Any]:
    """A 401's body: OpenAI's error shape under /v1 (what its SDKs parse), FastAPI's `detail` elsewhere."""
    if path.startswith("/v1/"):
        return {"error": {"message": detail, "type": "authentication_error", "param": None, "code": None}}
    return {"detail": detail}


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def declare_security(app: FastAPI, surface: AuthSurface) -> None:
    """Mark every operation the gate closes as needing the bearer key in the OpenAPI schema (the open
    ones, /health and /ready, declare none)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME_NAME] = SECURITY_SCHEME
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if surface.is_open(path):
                    operation.pop("security", None)
                else:
                    operation["security"] = [{SCHEME_NAME: []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_security(app: FastAPI, settings: Settings, refusals: Refusals, open_paths: frozenset[str]) -> None:
    """The API key gate (before the body limits read a byte) for every path but `open_paths`, and CORS
    for the configured origins (none: same origin only), outside it so that refusals carry its headers too."""
    app.state.api_keys = ApiKeys(settings.api_keys)
    surface = AuthSurface(open_paths, metrics_open=not settings.metrics_need_key)
    app.add_middleware(ApiKeyGate, keys=app.state.api_keys, surface=surface, refusals=refusals)
    declare_security(app, surface)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],  # DELETE: cancel a stream (resumable.py)
            allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
            expose_headers=["Retry-After", "X-Stream-ID"],
            max_age=600,
        )
