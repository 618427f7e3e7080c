"""Per-connection rate limits: a token bucket, and patience for a flood. Pure, no I/O.

Each incoming message takes a token; tokens refill at ``per_second`` up to ``burst``.
A message that finds no token is dropped (the peer is told). Each dropped message also
uses up one unit of *patience*, of which there are ``FLOOD_SECONDS`` worth of refills;
when that is gone, the peer is flooding, and its connection is closed. Patience comes
back only from refills that a full bucket cannot hold: a client that overshoots now and
then, and is quiet in between, is never cut off, while one that stays over the limit
(at twice the rate, say) runs out within a few seconds.
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


class Verdict(enum.Enum):
    ALLOW = "allow"
    DROP = "drop"  # no token: drop the message, tell the peer
    FLOOD = "flood"  # no patience either: close the connection


class TokenBucket:
    """One connection's tokens and patience under ``limit``, full at ``now``, refilled
    lazily from the time it is given. roomkit makes one per connection: a ``RateLimit``
    is the public, shareable setting, and the bucket its private, mutable state."""

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
        # Refills top up the tokens first; only what a full bucket cannot hold restores
        # patience, so a peer that keeps the bucket empty never gets any back.
        spare = self._tokens + refill - limit.burst
        if spare <= 0:
            self._tokens += refill
        else:
            self._tokens = float(limit.burst)
            self._patience = min(limit.per_second * FLOOD_SECONDS, self._patience + spare)
        if self._tokens >= 1 - 1e-9:  # a sender at exactly the rate, despite rounding
            self._tokens -= 1
            return Verdict.ALLOW
        self._patience -= 1
        return Verdict.DROP if self._patience > 0 else Verdict.FLOOD
