"""Which of several members (worker processes, later nodes) a room lives in. Pure.

Rendezvous hashing (highest random weight): each member scores every room with a hash
of the pair, and the room lives in the member with the highest score. Every member
computes the same answer from the same list, with no table to share; and when a member
leaves, only the rooms it held move (each to its next best), while the others stay put.
The hash is BLAKE2b of the room's identity and the member's id, so it is the same in
every process and every run (Python's own ``hash`` of a str is not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import attrs

from .._roomid import RoomId

__all__ = ["Placement", "owner", "score"]


def score(room: RoomId, member: str) -> int:
    """How much ``member`` wants ``room``: a 64-bit number, the same everywhere."""
    # The namespace's length makes the split unambiguous; a room name is printable, so
    # NUL ends it.
    key = f"{len(room.namespace)}:{room.namespace}\0{room.name}\0{member}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def owner(room: RoomId, members: Iterable[str]) -> str:
    """The member ``room`` lives in: the best scoring (ties, however unlikely, go to the
    least id, so that every member agrees).

    Raises:
      ValueError: if ``members`` is empty.
    """
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (score(room, member), member)
        if (
            best is None
            or candidate[0] > best[0]
            or (candidate[0] == best[0] and candidate[1] < best[1])
        ):
            best = candidate
    if best is None:
        raise ValueError("a room cannot be placed among no members")
    return best[1]


@attrs.frozen
class Placement:
    """Where rooms live, seen from one member.

    Attributes:
      me: this member's id.
      members: every member's id, ``me`` among them, in no particular order.

    Raises:
      ValueError: if ``me`` is not among ``members``, or an id is repeated or empty.
    """

    me: str
    members: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        if self.me not in self.members:
            raise ValueError(f"member {self.me!r} is not among {list(self.members)!r}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"a member id is repeated in {list(self.members)!r}")
        if not all(self.members):
            raise ValueError("a member id cannot be empty")

    def owner(self, room: RoomId) -> str:
        """The member ``room`` lives in."""
        return owner(room, self.members)

    def owns(self, room: RoomId) -> bool:
        """Whether ``room`` lives here."""
        return self.owner(room) == self.me
