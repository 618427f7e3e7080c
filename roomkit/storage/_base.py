"""The interface every storage backend implements."""

from __future__ import annotations

import abc
import builtins
from collections.abc import Sequence

from .._roomid import RoomId
from ._changes import Changes, KeyRange

__all__ = ["Store", "StoredAlarm"]

StoredAlarm = tuple[RoomId, float, int]
"""A room's alarm as stored: the room, when it is due (Unix seconds), its retry count."""


class Store(abc.ABC):
    """Durable key-value data and alarms for every room of a server.

    Values are JSON text; keys are strings ordered by code point. A backend applies a
    whole :meth:`commit` or none of it, and once ``commit`` returns the data must
    survive the process being killed. Reads never see half a commit.

    roomkit calls a store from one Trio task at a time per room, but from many rooms at
    once; a backend serialises what it must.
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
    async def commit(self, batch: Sequence[tuple[RoomId, Changes]]) -> None:
        """Apply every change of ``batch`` in one transaction, in order, durably."""

    @abc.abstractmethod
    async def alarms(self) -> builtins.list[StoredAlarm]:
        """Every stored alarm, to schedule when a server starts."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the backend's resources; nothing is called after this."""
