"""A cluster member's lease, by its own monotonic clock. Pure, no I/O.

A member of a cluster (``storage="postgresql://..."``) heartbeats in the members table,
which sets its row's expiry to PostgreSQL's ``now() + lease``. Other members take its
rooms over once that expiry has passed, by PostgreSQL's clock. So that a process that
was stopped (SIGSTOP, a long pause) never serves its rooms after they may have moved,
it keeps its own view of the same lease, by its monotonic clock: a heartbeat *sent* at
``t`` that succeeds makes it valid until ``t + lease - margin``, which is before the row
can expire however long the heartbeat took to arrive (PostgreSQL computed ``now()``
after ``t``). Past it, the process handles no event until a heartbeat succeeds again.

The margin absorbs the two clocks running at slightly different rates; it is a
fraction of the lease (``MARGIN``). The data's safety does not rest on any of this:
every write is fenced by the room's epoch in the same transaction. The lease only keeps
a stale process from serving reads and holding clients.

:class:`Lease` is fed what the heartbeats did, with the time each was sent and the
time its answer came, and says whether the process is valid now, until when, when the
next heartbeat is due, and when the process must fence every room it holds: when the
lease runs out (:meth:`Lease.expired`), when the member was replaced, and when a
renewal comes back only after the lease it renews had run out. That last one matters:
PostgreSQL may have let the row expire before the heartbeat reached it, another member
may hold the rooms by now, and a process that simply carried on would serve them.
"""

from __future__ import annotations

import enum
import math
from typing import Final

import attrs

__all__ = ["HEARTBEATS_PER_LEASE", "MARGIN", "Heard", "Lease", "Verdict"]

#: Heartbeats per lease: two may fail (or be slow) before the lease runs out.
HEARTBEATS_PER_LEASE: Final = 3
#: The part of the lease given up to the clocks' drift: PostgreSQL's and this host's
#: clocks run at rates that differ by parts per million, far below a tenth.
MARGIN: Final = 0.1


class Heard(enum.Enum):
    """What one heartbeat came back with."""

    #: The member's row was renewed: valid until the send time plus the lease.
    RENEWED = "renewed"
    #: The heartbeat failed (PostgreSQL unreachable, an error): the lease runs on as it
    #: was, and may run out.
    FAILED = "failed"
    #: No row has this member and incarnation any more: another process registered in
    #: its place (a restart of the same member id), or the row was deleted. The lease is
    #: over at once, and the process must register again.
    REPLACED = "replaced"


@attrs.frozen
class Verdict:
    """What a heartbeat's answer leads to.

    Attributes:
      next: when the next heartbeat is due.
      fence: whether every room this process holds must be fenced now, before it goes
        on: the lease ran out before this answer (or the member was replaced), and the
        rooms may be another member's already.
      resumed: whether this renewal ends a time without a lease (after a fence), so
        that the process serves again.
    """

    next: float
    fence: bool = False
    resumed: bool = False


@attrs.define
class Lease:
    """This process's lease: valid until ``until`` (monotonic seconds), renewed by
    heartbeats.

    Attributes:
      seconds: the lease, as registered (``--lease``).
      until: the monotonic time up to which the process may handle events; ``-inf``
        until the first heartbeat (the registration) succeeds.
      held: whether the process holds its rooms: from a renewal until a fence. False
        before the registration, and from a fence until the next renewal.
    """

    seconds: float = attrs.field()
    until: float = -math.inf
    held: bool = False
    _registered: bool = attrs.field(default=False, init=False)  # heard a renewal once

    @seconds.validator
    def _positive(self, _: attrs.Attribute[float], value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"a lease is positive seconds, not {value!r}")

    @property
    def interval(self) -> float:
        """Seconds between heartbeats, from one's sending to the next's."""
        return self.seconds / HEARTBEATS_PER_LEASE

    @property
    def margin(self) -> float:
        """Seconds of the lease given up to the clocks' drift."""
        return self.seconds * MARGIN

    def valid(self, now: float) -> bool:
        """Whether the process may handle an event at ``now``."""
        return now < self.until

    def expired(self, now: float) -> bool:
        """Whether the lease has run out at ``now`` on rooms still held: they are to be
        fenced now (once: they are not held any more)."""
        if self.held and now >= self.until:
            self.held = False
            return True
        return False

    def heard(self, sent: float, now: float, outcome: Heard) -> Verdict:
        """Record what the heartbeat sent at ``sent`` came back with at ``now``.

        The next heartbeat is due an interval after ``sent``, or at ``sent`` itself (at
        once) after ``REPLACED``, when the next is a new registration. A renewal never
        shortens the lease: a slow heartbeat that comes back after a later one counts
        from its own, earlier, send time.
        """
        if outcome is Heard.REPLACED:
            fence, self.held, self.until = self.held, False, -math.inf
            return Verdict(sent, fence=fence)
        if outcome is Heard.FAILED:
            return Verdict(sent + self.interval, fence=self.expired(now))
        fence = self.expired(now)
        resumed = not self.held and self._registered
        self.held = self._registered = True
        self.until = max(self.until, sent + self.seconds - self.margin)
        return Verdict(sent + self.interval, fence=fence, resumed=resumed)
