"""Per-connection rate limits: a token bucket, and patience for a flood. Pure, no I/O.

Each incoming message takes a token; tokens refill at ``per_second`` up to ``burst``.
A message that finds no token is dropped (the peer is told). A peer that goes on
sending while out of tokens uses up its *patience*: ``FLOOD_SECONDS`` worth of refills.
When that is gone too, the peer is flooding, and its connection is closed. Patience
comes back at the same rate as tokens, so a client that overshoots now and then is
never cut off.
"""

from __future__ import annotations

import enum
import math
from typing import Final

import attrs

__all__ = ["FLOOD_SECONDS", "RateLimit", "TokenBucket", "Verdict"]

#: Seconds' worth of refills a peer may keep sending into an empty bucket before it is
#: taken for a flood and disconnected.
FLOOD_SECONDS: Final = 3.0


@attrs.frozen
class RateLimit:
    """A token bucket for each connection: ``per_second`` messages, bursts up to ``burst``.

    Set it as ``Room.rate_limit``; None turns rate limiting off.
    """

    per_second: float
    burst: int

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.per_second) and self.per_second > 0):
            raise ValueError(f"per_second must be a positive number, not {self.per_second!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be a positive int, not {self.burst!r}")

    def bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self, now)


class Verdict(enum.Enum):
    ALLOW = "allow"
    DROP = "drop"  # no token: drop the message, tell the peer
    FLOOD = "flood"  # no patience either: close the connection


class TokenBucket:
    """One connection's tokens and patience, refilled lazily from the time it is given."""

    __slots__ = ("_limit", "_patience", "_then", "_tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._patience = limit.per_second * FLOOD_SECONDS
        self._then = now

    def take(self, now: float) -> Verdict:
        """Spend a token for a message arriving at ``now`` (seconds, any monotonic clock)."""
        limit = self._limit
        refill = max(0.0, now - self._then) * limit.per_second
        self._then = now
        self._tokens = min(limit.burst, self._tokens + refill)
        self._patience = min(limit.per_second * FLOOD_SECONDS, self._patience + refill)
        if self._tokens >= 1 - 1e-9:  # a sender at exactly the rate, despite rounding
            self._tokens -= 1
            return Verdict.ALLOW
        self._patience -= 1
        return Verdict.DROP if self._patience > 0 else Verdict.FLOOD
