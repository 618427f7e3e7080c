"""A room's members and what the room decides about them. Pure, no I/O.

:class:`RoomCore` is the bookkeeping of one live room, whatever its members are (the
actor's are connections): who is in it, in join order, and which tags they carry; its
lifecycle state (``_core/roomstate.py``); and the events on their way to it. From
these it decides

* whether a handshake may go on to ``on_connect`` (:meth:`RoomCore.admission`);
* who is idle at a given time, and when the next idle sweep is due
  (:meth:`RoomCore.joined`, :meth:`RoomCore.sweep`);
* whether the room, its events handled, may end or hibernate (:meth:`RoomCore.at_rest`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Final, Generic, Protocol, TypeVar

import attrs

from .._metrics import RefusalReason
from .roomstate import Change, RoomState, advance
from .tags import TagIndex

__all__ = [
    "HOOK_FAILED",
    "INTERNAL_ERROR",
    "ROOM_FULL",
    "ROOM_MOVED",
    "SHUTTING_DOWN",
    "Member",
    "Refusal",
    "RoomCore",
]


class Member(Hashable, Protocol):
    """What the room core needs of a member."""

    @property
    def last_seen(self) -> float:
        """When the peer last sent a message, on the clock the sweep is given."""


M = TypeVar("M", bound=Member)


@attrs.frozen
class Refusal:
    """A handshake refused: ``reason`` for the metrics, the HTTP ``status`` and ``text``."""

    reason: RefusalReason
    status: int
    text: str


SHUTTING_DOWN: Final = Refusal("shutting_down", 503, "Server shutting down")
ROOM_FULL: Final = Refusal("room_full", 503, "Room is full")
#: The room failed it: its ``__init__``, ``on_start`` or ``on_connect`` raised, or the
#: commit of ``on_connect``'s writes failed.
HOOK_FAILED: Final = Refusal("error", 500, "Internal error")
#: roomkit's own code failed handling it (a bug).
INTERNAL_ERROR: Final = Refusal("internal_error", 500, "Internal error")
#: Another process claimed the room while its on_connect's writes were in flight: they
#: were refused, and the client may come straight back, to the room's new owner.
ROOM_MOVED: Final = Refusal("fenced", 503, "Service unavailable: the room moved")


class RoomCore(Generic[M]):
    """One live room's members, tags, lifecycle state and events on their way.

    Args:
      max_members: members beyond which a handshake is refused (``Room.max_connections``).
      idle_timeout: seconds without a message after which a member is idle, or None.
    """

    # Slots: every hibernated room keeps one.
    __slots__ = ("_expected", "_idle_timeout", "_max_members", "_members", "state", "tags")

    def __init__(self, max_members: int, idle_timeout: float | None) -> None:
        self._max_members = max_members
        self._idle_timeout = idle_timeout
        self._members: dict[M, None] = {}  # in join order
        self.tags: Final[TagIndex[M]] = TagIndex()
        self.state = RoomState.ASLEEP
        self._expected = 0  # events on their way that the room must stay up for

    def change(self, change: Change) -> None:
        """Move the room on by ``change`` (see ``roomstate.TRANSITIONS``)."""
        self.state = advance(self.state, change)

    # Members and tags.

    def join(self, member: M) -> None:
        """Count ``member`` in from its handshake on; it goes last in join order."""
        self._members[member] = None

    def leave(self, member: M, tags: Iterable[str]) -> bool:
        """Forget ``member``, which carries ``tags``; False if it was not a member."""
        if member not in self._members:
            return False
        del self._members[member]
        self.tags.remove(member, tags)
        return True

    def retag(self, member: M, old: Iterable[str], new: Iterable[str]) -> None:
        """Move ``member`` from ``old`` tags to ``new`` in the index, while it is a member."""
        if member in self._members:
            self.tags.remove(member, old)
            self.tags.add(member, new)

    def members(self, tag: str | None = None) -> Iterable[M]:
        """Every member, or those carrying ``tag``, in join (or tagging) order."""
        return self._members if tag is None else self.tags.members(tag)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    # Decisions.

    def admission(self, *, resume: bool = False) -> Refusal | None:
        """Whether a handshake, already counted among the members, may go on to
        ``on_connect``: None, or why it is refused. A ``resume`` of a parked session
        (a member still) takes that session's place: it never makes the room fuller."""
        if self.state in (RoomState.CLOSING, RoomState.DRAINING):
            return SHUTTING_DOWN
        if len(self._members) - resume > self._max_members:
            return ROOM_FULL
        return None

    def joined(self, member: M) -> float | None:
        """When the idle sweep is due for a newcomer, or None without an idle timeout.

        A sweep due earlier stands (the newcomer cannot be idle before it): set the
        sweep's timer to this only if none is set, never later.
        """
        if self._idle_timeout is None:
            return None
        return member.last_seen + self._idle_timeout

    def sweep(self, now: float, candidates: Iterable[M]) -> tuple[list[M], float | None]:
        """Of ``candidates`` (the open members), those idle at ``now``; and when the next
        sweep is due: when the quietest of the others may be idle (None: nobody left)."""
        timeout = self._idle_timeout
        assert timeout is not None
        idle: list[M] = []
        quietest: float | None = None
        for member in candidates:
            seen = member.last_seen
            if now - seen >= timeout:
                idle.append(member)
            elif quietest is None or seen < quietest:
                quietest = seen
        return idle, None if quietest is None else quietest + timeout

    # The room's end.

    def expect(self) -> None:
        """An event is on its way (a due alarm, a drain): the room stays up for it."""
        self._expected += 1

    def arrived(self) -> None:
        """An event expected is queued, or will never be."""
        self._expected -= 1

    @property
    def quiet(self) -> bool:
        """No member, and no event on its way: the room may end once its queue is empty
        and its commits are durable."""
        return not self._members and not self._expected

    def at_rest(self) -> Change | None:
        """What a room does once every queued event is handled and its commits are
        durable: END with no member left, HIBERNATE with members while it may, and
        None (stay awake) while an event is on its way, or while it shuts down."""
        if self._expected:
            return None
        if not self._members:
            return Change.END
        return Change.HIBERNATE if self.state is RoomState.AWAKE else None
