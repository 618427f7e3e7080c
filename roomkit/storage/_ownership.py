"""A store shared by a cluster: its members, and which of them owns each room.

:class:`ClusterStore` is a :class:`~roomkit.storage.Store` that also keeps the cluster's
membership (each member's lease, renewed by its heartbeats) and the room directory
(each room's owner and epoch), in the same database as the rooms' data, so that taking a
room over and fencing its old owner's writes are one transaction each. PostgreSQL's
store is one (``PostgresStore``); this module imports no driver, so that code which only
asks ``isinstance(store, ClusterStore)`` needs none.

A member is *live* while its lease runs (by the database's clock, one clock for all) and
it is not draining. A room is *free* for a member when nobody owns it (never claimed, or
released), the member owns it already (a restarted member takes its rooms back at
once), or its owner's lease has run out. A draining owner keeps its rooms until it
releases them, so that the last writes of its drain are not fenced.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import attrs

from .._roomid import RoomId
from ._base import Claim, Store, StoredAlarm
from ._changes import AlarmWrite

__all__ = ["Acquired", "ClusterStore", "Owned", "Owner"]


@attrs.frozen
class Acquired:
    """:meth:`ClusterStore.acquire` won the room: its claim, and its stored alarm.

    Attributes:
      claim: the room under its new epoch, for the room's writes to carry.
      alarm: the room's alarm as stored (to schedule in the new owner), or None.
    """

    claim: Claim
    alarm: AlarmWrite | None


@attrs.frozen
class Owned:
    """:meth:`ClusterStore.acquire` lost the room: it is another member's.

    Attributes:
      member: the owner's member id.
      address: where the owner listens for the cluster ("HOST:PORT").
      draining: the owner is draining: it will release the room soon, and takes no new
        client meanwhile (answer 503, so that the client comes back at once).
      expires_in: seconds from the database's now until the owner's lease ends (see
        :class:`Owner`).
    """

    member: str
    address: str
    draining: bool
    expires_in: float = attrs.field(default=math.inf, eq=False)


@attrs.frozen
class Owner:
    """A room's owner, as :meth:`ClusterStore.locate` finds it.

    Attributes:
      member: the owner's member id.
      address: where it listens for the cluster, or None if it left the cluster.
      live: its lease runs (by the database's clock) and it is not draining.
      expires_in: seconds from the database's now until the owner's lease ends (its
        row's expiry, unless a heartbeat renews it), 0 or less once it has ended or the
        owner left; infinite if the store cannot tell. A span of the database's clock
        alone, so that a member can bound how long it trusts the answer by its own
        clock, never comparing two machines' clocks: the directory cache drops the
        entry when that span has passed since the question was sent. Not part of the
        equality: two answers that name the same owner are the same answer, however
        far apart they were given.
    """

    member: str
    address: str | None
    live: bool
    expires_in: float = attrs.field(default=math.inf, eq=False)


class ClusterStore(Store):
    """A :class:`~roomkit.storage.Store` that also keeps the cluster's members and the
    room directory (see the module's docstring for *live* and *free*).

    A member's heartbeats carry its ``(member, incarnation)``; a heartbeat that finds no
    such row means that the member was replaced (it restarted elsewhere, or was removed):
    the process must stop serving and register again.
    """

    @abc.abstractmethod
    async def register(self, member: str, address: str, lease: float) -> int:
        """Make ``member`` live at ``address`` for ``lease`` seconds, not draining, under a
        new incarnation (any earlier one of the member is replaced); returns it."""

    @abc.abstractmethod
    async def heartbeat(self, member: str, incarnation: int, lease: float) -> bool:
        """Extend the member's lease to ``lease`` seconds from now (the database's now).

        Returns:
          False if that incarnation of the member is no longer registered (replaced or
          removed): nothing was extended.
        """

    @abc.abstractmethod
    async def set_draining(self, member: str, incarnation: int) -> None:
        """Mark the member draining: not live any more, though it keeps its rooms."""

    @abc.abstractmethod
    async def leave(self, member: str, incarnation: int) -> None:
        """Remove the member's row: its rooms are free for anyone."""

    @abc.abstractmethod
    async def acquire(self, room: RoomId, member: str, *, lock_timeout: float) -> Acquired | Owned:
        """Make ``member`` the room's owner under a new epoch if the room is free for it.

        Waits at most ``lock_timeout`` seconds for a session that holds the room's row
        (a commit of a stopped process, until ``idle_in_transaction_session_timeout``
        ends it).

        Raises:
          StorageError: the wait ran out, or the database failed: the room's owner is
            not known (the caller answers 503; the client retries).
        """

    @abc.abstractmethod
    async def release(self, claims: Sequence[Claim], member: str) -> None:
        """Give up each of ``claims``'s rooms that ``member`` still owns under that claim,
        so that another member acquires it at once (a drain, after its last commit)."""

    @abc.abstractmethod
    async def locate(self, room: RoomId) -> Owner | None:
        """The room's owner, or None for a room never claimed or released."""

    @abc.abstractmethod
    async def orphan_alarms(
        self, horizon: float, *, member: str | None = None
    ) -> list[StoredAlarm]:
        """The stored alarms due within ``horizon`` seconds (or overdue) of the rooms
        that are free: nobody's, or their owner's lease ran out, or (with ``member``)
        ``member``'s own, which a restarted member must take back for their alarms to
        fire; the caller skips the rooms it runs."""
