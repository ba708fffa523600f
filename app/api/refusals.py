"""Requests the API refused before the engine saw them, counted by reason for GET /metrics.

The engine counts its own refusals (a full queue: `storydiff_requests_total{outcome="rejected"}`);
these are the ones decided in front of it. Counted on the event loop only, so no lock.
"""

from __future__ import annotations

from typing import Literal, get_args

RefusalReason = Literal["body_too_large", "body_timeout", "unauthorized", "over_timeout", "client_quota"]
"""413, 408, 401, 429 for work that could not finish within the timeout, 429 past a client's quota."""

REFUSAL_REASONS: tuple[RefusalReason, ...] = get_args(RefusalReason)


class Refusals:
    """A counter per refusal reason."""

    def __init__(self) -> None:
        self._counts: dict[RefusalReason, int] = dict.fromkeys(REFUSAL_REASONS, 0)

    def count(self, reason: RefusalReason) -> None:
        self._counts[reason] += 1

    def snapshot(self) -> dict[RefusalReason, int]:
        return dict(self._counts)
