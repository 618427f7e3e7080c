"""Where a cluster's front door sends a routed handshake. Pure, no I/O.

In a cluster (``storage="postgresql://..."``) a room is owned by one member at a time,
as the room directory (the ``rooms`` table joined with ``members``) says. A member is
one process: a node started without ``--workers``, whose member id is its advertised
address ``HOST:PORT``; or one worker of a node with ``--workers N``, ``HOST:PORT/i``.

:meth:`Membership.locate` decides, from what the directory says of the room's owner,
what this process does with a handshake for it:

* the owner is this process: serve it here;
* the owner is a live sibling worker of this node: hand the connection to it over its
  Unix socket (``HandTo``), as ``--workers`` does without a cluster;
* the owner is another live node: forward the connection to its address
  (``ForwardTo``); unless the request was already forwarded here by a node, or handed
  here by a sibling: a request is never passed on twice, so two members that disagree
  cannot pass it back and forth (``Unavailable``, 503; the client comes back);
* nobody live owns it (never claimed, released, or its owner's lease ran out): the
  worker of this node that the placement picks acquires it; here if that is this one,
  else the connection is handed to it. Unless another node forwarded the request here:
  its directory was stale (the room ended here and was released since, say), and the
  room is as free for it as for this node. It gets 503 (``Unavailable``), drops its
  entry, and acquires the room itself when the client comes back, so that a room
  starts where the client's own node is, not where the stale entry said it was.

The directory is a hint: whoever serves the room acquires it first in the store, and
the acquire decides (a race lost there sends the client on to the winner).

A member caches what the directory says of a live owner elsewhere, so that each
handshake for the room does not ask PostgreSQL again. :func:`trusted_until` says for
how long: a lease at most, and never past the end of the owner's lease as the answer
gave it. A stopped owner's entry then goes when its row expires, and the next handshake
asks again, learns that nobody live owns the room, and acquires it; an entry trusted a
lease from the question would keep sending clients to the stopped owner for up to a
lease more.
"""

from __future__ import annotations

from typing import Final

import attrs

from .._roomid import RoomId
from .handoff import HandTo, Refuse, ServeHere, where
from .placement import Placement

__all__ = [
    "ForwardTo",
    "Located",
    "Membership",
    "ServeHere",
    "Unavailable",
    "advertised",
    "trusted_until",
]

#: Listening hosts that are no address another machine can connect to.
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


@attrs.frozen
class Located:
    """A room's owner as the directory has it.

    Attributes:
      member: the owner's member id.
      address: the ``HOST:PORT`` its node advertises.
      live: whether its lease runs (by PostgreSQL's clock) and it is not draining.
    """

    member: str
    address: str
    live: bool


@attrs.frozen
class ForwardTo:
    """Another node owns the room: forward the connection to ``address``."""

    address: str


@attrs.frozen
class Unavailable:
    """The room cannot be served or reached from here now: 503, and the client retries."""


Decision = ServeHere | HandTo | ForwardTo | Unavailable


def advertised(host: str, port: int, hostname: str) -> str:
    """The ``HOST:PORT`` a member listening on ``host`` and ``port`` advertises when it
    is not told: a wildcard host as ``hostname`` (the machine's name), an IPv6 host in
    brackets."""
    where = hostname if host in _WILDCARDS else host
    return f"[{where}]:{port}" if ":" in where else f"{where}:{port}"


def trusted_until(asked: float, lease: float, expires_in: float) -> float:
    """Until when a directory cache trusts an answer that names a live owner.

    Args:
      asked: when the question was sent, by this process's monotonic clock.
      lease: this member's lease, the longest an entry is trusted.
      expires_in: seconds from the database's now until the owner's lease ends, as the
        answer says. The database's now came after ``asked``, so ``asked + expires_in``
        is no later than the owner's row expires (the two clocks' rates differ by parts
        per million): a span of the database's clock, added to a time of this one,
        never a comparison of two clocks.

    Returns:
      a time on the same clock as ``asked``; ``asked`` itself when the owner's lease
      has ended already.
    """
    return asked + max(0.0, min(lease, expires_in))


@attrs.frozen
class Membership:
    """This process in its cluster: its node's address, and its slot among the node's
    workers.

    Attributes:
      advertise: the ``HOST:PORT`` other nodes reach this node at.
      workers: with ``--workers N``, where rooms live among the node's worker slots,
        seen from this worker; None for a node of one process.
    """

    advertise: str
    workers: Placement | None = None

    @property
    def me(self) -> str:
        """This process's member id: ``advertise``, or ``advertise/slot`` for a worker."""
        return self.member(self.workers.me) if self.workers is not None else self.advertise

    def member(self, slot: str) -> str:
        """The member id of this node's worker ``slot``."""
        return f"{self.advertise}/{slot}"

    def sibling(self, member: str) -> str | None:
        """The slot of ``member`` if it is another worker of this node, else None."""
        if self.workers is None:
            return None
        node, slash, slot = member.rpartition("/")
        if not slash or node != self.advertise or slot == self.workers.me:
            return None
        return slot if slot in self.workers.members else None

    def locate(
        self, room: RoomId, owner: Located | None, *, forwarded: bool, handed: bool
    ) -> Decision:
        """What this process does with a handshake for ``room`` whose owner the directory
        says is ``owner`` (None: the room was never claimed, or was released).

        Args:
          forwarded: the request came from another node (a verified
            ``roomkit-forwarded`` header): it is not forwarded again.
          handed: a sibling worker handed it here: it is not handed or forwarded again.
        """
        if owner is not None and owner.live:
            if owner.member == self.me:
                return ServeHere()
            slot = self.sibling(owner.member)
            if slot is not None:
                return Unavailable() if handed else HandTo(slot)
            return Unavailable() if forwarded or handed else ForwardTo(owner.address)
        if forwarded:
            return Unavailable()
        if self.workers is None:
            return ServeHere()
        placed = where(self.workers, room, handed=handed)  # nobody live: acquire, in its slot
        return Unavailable() if isinstance(placed, Refuse) else placed
