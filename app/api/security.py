"""Who may call the API: optional bearer API keys, CORS, and the page's security headers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.api.deps import RuntimeDep
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

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="api_key",
    description="`Authorization: Bearer KEY`, one of the server's STORYDIFF_API_KEYS; only when it has any.",
)


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


def require_api_key(
    request: Request, runtime: RuntimeDep, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """401 with `WWW-Authenticate: Bearer`, unless the server needs no key or the request has a key the
    server knows. A router's dependency (app/api/routes.py): what is routed there is closed."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.required:
        return
    if credentials is None:
        runtime.refusals.count("unauthorized")
        raise HTTPException(
            401, "this server needs an API key: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"}
        )
    if not keys.accepts(credentials.credentials):
        runtime.refusals.count("unauthorized")
        raise HTTPException(401, "the API key is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require_metrics_key(
    request: Request, runtime: RuntimeDep, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """As `require_api_key` for GET /metrics, unless `metrics_need_key` is off."""
    if runtime.settings.metrics_need_key:
        require_api_key(request, runtime, credentials)


def install_security(app: FastAPI, settings: Settings) -> None:
    """The keys `require_api_key` checks, and CORS for the configured origins (none: same origin only)."""
    app.state.api_keys = ApiKeys(settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],  # DELETE: cancel a stream (resumable.py)
            allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
            expose_headers=["Retry-After", "X-Stream-ID"],
            max_age=600,
        )
