"""Can the Hugging Face hub be asked right now? Decided in a second, before a loader waits on retries.

huggingface_hub retries a connection that fails five times with growing waits (about a minute
before it gives up or falls back to its cache), and its final error names HF_HUB_OFFLINE whether
or not that is set. Loaders of hub ids ask here first: when the hub is off or unreachable they read
only the local Hugging Face cache (`local_files_only`), and say the true reason when that misses.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from huggingface_hub import constants as hub_constants

PROBE_TIMEOUT_S = 3.0
"""How long one request to the hub's endpoint may take before the hub counts as unreachable."""


def hub_unavailable() -> str | None:
    """None when the hub's endpoint answers; otherwise why not, as a clause for an error message."""
    if hub_constants.HF_HUB_OFFLINE:  # huggingface_hub's own reading of HF_HUB_OFFLINE, as it obeys it
        return "hub access is switched off (HF_HUB_OFFLINE is set)"
    from huggingface_hub.utils import get_session  # the hub's own client: its proxies, headers and TLS

    endpoint = hub_constants.ENDPOINT
    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)  # any HTTP answer means it is reachable
    except Exception as err:  # requests' and httpx's errors share no base class
        reason = (str(err).splitlines() or [""])[0] or type(err).__name__
        return f"cannot reach {urlsplit(endpoint).netloc or endpoint} ({reason})"
    return None


def offline_hint(local_copy: str) -> str:
    """What to do without the hub: `local_copy`, plus unsetting HF_HUB_OFFLINE only where it is set."""
    return f"{local_copy}, or allow hub access (unset HF_HUB_OFFLINE)" if hub_constants.HF_HUB_OFFLINE else local_copy
