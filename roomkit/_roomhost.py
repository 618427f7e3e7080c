"""What a room needs from the server that runs it: storage, commits, timers, its registry."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

from ._metrics import Metrics
from ._roomid import RoomId
from .storage import AlarmWrite, Changes, Claim, Store

__all__ = ["RoomHost", "TimerKey"]

TimerKey = tuple[str, Hashable]
"""A timer on the server's scheduler: ``("alarm" | "sweep" | "rest", RoomId)`` (``rest``:
when an awake room's loop may have waited ``hibernate_after``), or ``("ping" | "grace",
conn)`` (a connection's next ping; a parked session's end)."""


class RoomHost(Protocol):
    """What a room needs from the server that runs it."""

    store: Store
    connections: int  # the server's count, kept by its rooms
    metrics: Metrics
    #: Trio's time up to which this process may handle events: its lease in a cluster
    #: (``_cluster.py``), infinity otherwise. Every room compares it before each event.
    valid_until: float

    async def claim(self, room: RoomId) -> Claim | None:
        """Claim ``room`` for this process in the store: a new epoch, before its first
        hook. None if it is not this process's to serve (in a cluster: another member
        owns it, or this one's lease ran out)."""

    def commit(
        self,
        claim: Claim,
        changes: Changes,
        done: Callable[[Exception | None], None],
        after: Callable[[], None],
    ) -> None:
        """Commit ``changes`` to ``claim``'s room; ``done`` hears how (see ``Committer``)."""

    def alarm_changed(self, room: RoomId, alarm: AlarmWrite) -> None: ...

    def stored_alarm(self, room: RoomId) -> AlarmWrite | None: ...

    def set_timer(self, key: TimerKey, deadline: float, *, earlier_only: bool = False) -> None:
        """Set the timer ``key``; with ``earlier_only``, only if that brings it forward."""

    def cancel_timer(self, key: TimerKey) -> None: ...

    def room_gone(self, room: RoomId, ended: Claim | None = None) -> None:
        """``room`` has ended, or was cancelled: it leaves the server's registry.

        ``ended`` is the claim of a room that ended with nothing pending (no
        connection, no event, its commits durable), which a cluster member releases;
        None for a room cancelled, fenced, or never claimed."""

    def wall_time(self) -> float:
        """Seconds since the epoch, as alarms are stored: ``time.time()`` in a server,
        Trio's clock from a fixed start in ``roomkit.testing``."""

    def jitter(self) -> float:
        """A number in [0, 1), to spread retries: ``random.random()``, or 0 in tests."""

    def unhandled(self, error: Exception) -> None:
        """A hook's ``error`` reached ``Room.on_error``'s default, which logged it:
        nothing more in a server; ``roomkit.testing`` raises it in the test."""
