"""When the Python client tries again: the backoff schedule and the count of tries.

Pure: no I/O, no clock of its own (the time comes in as an argument), no randomness
(the jitter is the caller's, a uniform draw up to the ceiling returned here). The
client feeds :class:`Reconnection` the end of each try and carries out what it says.

Theory of operation: an *outage* begins when an open WebSocket ends (or when the
client starts, before its first connection). Each failed try of the outage adds one to
``failures``; the wait before the next try is random, up to::

    min(initial_delay * growth ** failures, max_delay, early_max_delay)  # early in it
    min(initial_delay * growth ** failures, max_delay)                   # after early_period

so that a server back within the first ``early_period`` seconds of an outage has its
clients back within ``early_max_delay`` seconds (plus the connection's own time), and
a herd of clients is still spread over that window by the jitter. After a 1012
"Service restart" close the first try is made at once and is free: it adds nothing to
``failures``, whether it fails or not.
"""

from __future__ import annotations

import attrs

from ._closecodes import CloseCode

__all__ = ["Backoff", "GiveUp", "Reconnection", "Retry"]


@attrs.frozen
class Backoff:
    """The schedule: the longest wait before each try of an outage, in seconds."""

    initial_delay: float = 0.5
    growth: float = 2.0
    max_delay: float = 10.0
    early_max_delay: float = 2.0
    early_period: float = 60.0

    def __attrs_post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "early_max_delay", "early_period"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)!r}")
        if self.growth < 1:
            raise ValueError(f"growth must be at least 1, not {self.growth!r}")

    def ceiling(self, failures: int, outage: float) -> float:
        """The longest wait after ``failures`` failed tries, ``outage`` seconds into it."""
        grown = self.initial_delay * self.growth ** min(failures, 64)  # 64: no overflow
        ceiling = min(grown, self.max_delay)
        if outage < self.early_period:
            ceiling = min(ceiling, self.early_max_delay)
        return ceiling


@attrs.frozen
class Retry:
    """Try again after a random wait from 0 up to ``ceiling`` seconds.

    ``attempt`` counts the tries of the outage, this one included (1 for the first after
    a drop); the free try after a 1012 close has attempt 0 and ceiling 0.
    """

    attempt: int
    ceiling: float


@attrs.frozen
class GiveUp:
    """Stop: ``failures`` tries in a row have failed, more than ``max_retries``."""

    failures: int


@attrs.define
class Reconnection:
    """The tries of the current outage; :meth:`after` says what follows each one."""

    backoff: Backoff
    max_retries: int | None
    outage_began: float  # the time the current outage began
    failures: int = 0  # failed tries in a row, the free one after a 1012 not counted
    _free: bool = False  # whether the try now ending was the free one

    def after(self, *, opened: bool, close_code: int | None, now: float) -> Retry | GiveUp:
        """What to do once a try has ended at ``now``: ``opened`` says whether its
        WebSocket opened (and has since closed, with ``close_code``)."""
        if opened:
            self.failures, self.outage_began = 0, now
            if close_code == CloseCode.SERVICE_RESTART:
                self._free = True
                return Retry(attempt=0, ceiling=0.0)
        elif not self._free:
            self.failures += 1
        self._free = False
        if self.max_retries is not None and self.failures > self.max_retries:
            return GiveUp(self.failures)
        ceiling = self.backoff.ceiling(self.failures, now - self.outage_began)
        return Retry(attempt=self.failures + 1, ceiling=ceiling)
