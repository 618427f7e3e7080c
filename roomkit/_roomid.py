"""A room's identity: the route it is served under and its name."""

from __future__ import annotations

import attrs

__all__ = ["RoomId"]


@attrs.frozen
class RoomId:
    """Names one room for as long as its data lives, across restarts.

    Attributes:
      namespace: the route prefix the room is served under (``"/chat"``), or ``""`` when
        a single Room class serves every name. Stored data is keyed by it, so renaming
        a Room class keeps its data, and moving it to another prefix does not.
      name: the room's name.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
