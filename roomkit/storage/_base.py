"""The interface every storage backend implements."""

from __future__ import annotations

import abc
import builtins
from collections.abc import Sequence

import attrs

from .._errors import FencedError
from .._roomid import RoomId
from ._changes import Changes, KeyRange

__all__ = ["Claim", "Store", "StoredAlarm"]

StoredAlarm = tuple[RoomId, float, int]
"""A room's alarm as stored: the room, when it is due (Unix seconds), its retry count."""


@attrs.frozen(cache_hash=True)
class Claim:
    """A room as one process claimed it: the epoch :meth:`Store.claim` gave it.

    Every write a room's actor makes carries its claim; the store refuses it once a
    later claim has given the room a greater epoch.
    """

    room: RoomId
    epoch: int


class Store(abc.ABC):
    """Durable key-value data and alarms for every room of a server, fenced by epoch.

    Values are JSON text; keys are strings ordered by code point. A backend applies a
    whole :meth:`commit` or none of it, and once ``commit`` returns the data must
    survive the process being killed. Reads never see half a commit.

    Ownership: a room's actor, when it starts in a process, :meth:`claims <claim>` the
    room before its first hook runs, and every commit of the room's writes checks that
    claim in the same transaction. Several processes (or machines) may share one store:
    whichever claimed a room last is the only one whose writes to it land, so a process
    that lost a room (hung, stopped and resumed) never writes over the new owner's.

    roomkit calls a store from one Trio task at a time per room, but from many rooms at
    once; a backend serialises what it must.
    """

    @abc.abstractmethod
    async def claim(self, room: RoomId, owner: str) -> Claim:
        """Make ``owner`` (a process's id) the room's owner, in one transaction: the
        room's epoch becomes the stored one plus one (1 for a room never claimed).

        The claim need not be durable by itself, but must be before any write made
        under it is (a later durable commit may carry it to disk).
        """

    @abc.abstractmethod
    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        """The stored values of those ``keys`` that exist."""

    @abc.abstractmethod
    async def list(
        self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
    ) -> list[tuple[str, str]]:
        """The room's rows in ``keys``, in key order (descending if ``reverse``)."""

    @abc.abstractmethod
    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> builtins.list[FencedError]:
        """Apply every change of ``batch`` in one transaction, in order, durably, except
        the changes of each claim whose room has been claimed again since.

        The epoch check and the writes are one transaction: once the room's stored epoch
        is not the claim's, none of that claim's changes land, and the others' do.

        Returns:
          One :class:`~roomkit.FencedError` per claim refused (none: everything landed).

        Raises:
          Exception: the commit failed, and nothing of it landed.
        """

    @abc.abstractmethod
    async def alarms(self) -> builtins.list[StoredAlarm]:
        """Every stored alarm, to schedule when a server starts."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the backend's resources; nothing is called after this."""
