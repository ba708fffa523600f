"""Who a request comes from, for per-client quotas and the engine's turns: its API key, or its address.

With API keys a client is its key (a digest of it: the key itself is never kept or logged). Without
keys it is the connecting address; behind a reverse proxy named in `trusted_proxies`, the first
`X-Forwarded-For` hop, the address the proxy saw (a hop from anyone else is ignored: any client can
send the header).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from fastapi import Request

from app.config import Settings

ProxyNetworks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@lru_cache(maxsize=8)
def proxy_networks(proxies: tuple[str, ...]) -> ProxyNetworks:
    """`trusted_proxies` as networks (a lone address is a /32 or /128); a bad entry is a ValueError."""
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _trusted(address: str, networks: ProxyNetworks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, proxies: Sequence[str]) -> str:
    """The client's address: the first `X-Forwarded-For` hop when `peer` is a trusted proxy, else `peer`."""
    peer = peer or "unknown"
    if forwarded_for and proxies and _trusted(peer, proxy_networks(tuple(proxies))):
        first = forwarded_for.split(",")[0].strip()
        if first:
            return first
    return peer


def client_of(request: Request, settings: Settings) -> str:
    """The client a request counts against: `key:<digest>` with API keys, else `addr:<address>`."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if settings.api_keys and scheme.lower() == "bearer" and token:
        return "key:" + hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).hexdigest()[:16]
    peer = request.client.host if request.client is not None else None
    return "addr:" + client_address(peer, request.headers.get("x-forwarded-for"), settings.trusted_proxies)
