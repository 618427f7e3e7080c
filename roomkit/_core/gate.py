"""The output gate: a hook's sends wait for its writes, and leave in hook order.
Pure, no I/O: it returns what to deliver, and its caller delivers it.

While a hook runs, what it sends is collected in an *outbox* (``hold``) and what it
writes in a :class:`~roomkit.storage.Changes`. When it returns (``finish``), its outbox
joins the line of those in flight, and its changes, if any, go to the committer; an
outbox is released once its changes are durable and every outbox before it has been
released, so clients never hear of a write that could still be lost, and sends leave
in the order the hooks ran. A hook that raises has its outbox dropped (``drop``).

The gate counts the bytes it holds against each recipient's send queue
(:class:`Holder`), and keeps a frame only for the recipients that take it: what one
hook sends stays bounded however much it broadcasts.

How a caller drives it::

    hold(outbox, item, recipients)     while the hook runs, for each send
    passes(changes, outbox)            when it returns: True if it waits for nothing
                                       (deliver it now, then settle(True)); else
    finish(changes, outbox, settle)
        -> None                        nothing of its own to commit: release()
        -> entry                       commit entry.changes; on the outcome,
                                       committed(entry, ok), then release()
    release() -> entries               deliver each entry's outbox, in order, then
                                       call its settle(True)
    fail() -> entries                  the store failed: call each settle(False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from wsproto.events import CloseConnection

from ..storage._changes import Changes

__all__ = ["Holder", "Outbox", "OutputGate", "Pending", "Settle"]


class Holder(Protocol):
    """A recipient's send queue, as the gate counts against it."""

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes held for this recipient; False if it takes no more."""

    def unhold(self, size: int) -> None:
        """Give back ``size`` bytes that ``hold`` counted."""


R = TypeVar("R", bound=Holder)

#: What a hook sent, in order: each frame (or close) with the recipients it is for.
Outbox = list[tuple[bytes | CloseConnection, Sequence[R]]]
#: Told whether an outbox was released (True) or dropped by a failed store (False): the
#: answer to a handshake waits like a send.
Settle = Callable[[bool], None]


class Pending(Generic[R]):
    """A returned hook's outbox, waiting for its changes (and earlier ones) to be durable."""

    __slots__ = ("changes", "durable", "outbox", "settle")

    def __init__(self, changes: Changes | None, outbox: Outbox[R], settle: Settle | None) -> None:
        self.changes = changes
        self.outbox = outbox
        self.settle = settle
        self.durable = changes is None


class OutputGate(Generic[R]):
    """One room's outboxes in flight, in hook order."""

    __slots__ = ("_inflight",)

    def __init__(self) -> None:
        # A list, not a deque: a few entries at most, and an idle room's gate stays small
        # (an empty deque alone is over 600 bytes).
        self._inflight: list[Pending[R]] = []

    @property
    def settled(self) -> bool:
        """Whether no outbox is in flight: no commit of the room is awaited."""
        return not self._inflight

    @staticmethod
    def hold(outbox: Outbox[R], item: bytes | CloseConnection, recipients: Sequence[R]) -> None:
        """Collect ``item`` for ``recipients`` in a running hook's ``outbox``.

        A frame is kept only for the recipients that hold its size; a close is kept for
        all of them, and counts against none.
        """
        if isinstance(item, bytes):
            size = len(item)
            recipients = [r for r in recipients if r.hold(size)]
            if not recipients:
                return
        outbox.append((item, recipients))

    @staticmethod
    def drop(outbox: Outbox[R]) -> None:
        """Forget a raising hook's outbox, giving back what it held."""
        _unhold(outbox)

    def layers(self) -> list[Changes]:
        """The changes of returned hooks that are not durable yet, oldest first."""
        return [p.changes for p in self._inflight if p.changes is not None]

    def passes(self, changes: Changes | None, outbox: Outbox[R]) -> bool:
        """Whether a returned hook's outbox goes out at once, past the gate: nothing
        to commit (changes rolled back count as none) and nothing in flight before it.

        If so, what it held is given back, and the caller delivers it; if not, the
        caller puts it in line with :meth:`finish`. (The common case, a hook that
        writes nothing, costs no entry.)
        """
        if changes or self._inflight:
            return False
        _unhold(outbox)
        return True

    def finish(
        self, changes: Changes | None, outbox: Outbox[R], settle: Settle | None
    ) -> Pending[R] | None:
        """A hook returned: put its outbox in line behind those in flight.

        Returns the entry whose ``changes`` the caller must commit, reporting the
        outcome to :meth:`committed` before it calls :meth:`release`; or None when the
        hook has nothing to commit (changes rolled back count as none), and
        :meth:`release` may be called at once.
        """
        if changes is not None and not changes:
            changes = None  # written, then rolled back: nothing to commit
        pending = Pending(changes, outbox, settle)
        self._inflight.append(pending)
        return None if changes is None else pending

    def committed(self, pending: Pending[R], ok: bool) -> bool:
        """Record how ``pending``'s commit went; True if the room must now reset.

        The first failure resets the room (the caller then calls :meth:`fail`); the
        failures reported after it, of outboxes already dropped, are moot, even once
        the room's next instance has outboxes of its own in flight.
        """
        if ok:
            pending.durable = True
            return False
        return any(entry is pending for entry in self._inflight)

    def release(self) -> list[Pending[R]]:
        """Take, in hook order, every entry whose changes and predecessors are durable.

        Their held bytes are given back: the caller delivers each outbox, in order,
        then calls its ``settle(True)``.
        """
        inflight = self._inflight
        ready = 0
        while ready < len(inflight) and inflight[ready].durable:
            ready += 1
        if not ready:
            return []
        released = inflight[:ready]
        del inflight[:ready]
        for pending in released:
            _unhold(pending.outbox)
        return released

    def fail(self) -> list[Pending[R]]:
        """The store failed: drop every entry in flight, giving back what they held.

        The caller calls each one's ``settle(False)``: its handshake is refused.
        """
        dropped, self._inflight = self._inflight, []
        for pending in dropped:
            _unhold(pending.outbox)
        return dropped


def _unhold(outbox: Outbox[R]) -> None:
    """Give back the bytes an outbox held against its recipients' send queues."""
    for item, recipients in outbox:
        if isinstance(item, bytes):
            size = len(item)
            for recipient in recipients:
                recipient.unhold(size)
