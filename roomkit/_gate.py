"""The output gate: a hook's sends wait for its writes, and leave in hook order.

While a hook runs, what it sends is collected in an *outbox* (``hold``) and what it
writes in a :class:`~roomkit.storage.Changes`. When it returns (``finish``), its
changes go to the committer and its outbox joins the ``inflight`` queue; an outbox is
released once its changes are durable and every outbox before it has been released,
so clients never hear of a write that could still be lost, and sends leave in the
order the hooks ran. A hook that raises has its outbox dropped (``drop``).

The gate counts the bytes it holds against each recipient's ``max_send_queue``, and
keeps a frame only for recipients with room for it: what one hook sends stays bounded
however much it broadcasts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs
import trio
from wsproto.events import CloseConnection

from .storage import Changes

__all__ = ["Outbox", "OutputGate", "Recipient"]


class Recipient(Protocol):
    """What the gate asks of a connection it holds frames for (``Transport``)."""

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes held for it; False if it takes no more."""

    def unhold(self, size: int) -> None: ...

    def push(self, item: bytes | CloseConnection, *, kick: bool = True) -> None: ...

    def kick(self) -> None: ...


Outbox = list[tuple[bytes | CloseConnection, Iterable[Recipient]]]
Settle = Callable[[bool], None]
Commit = Callable[[Changes, Callable[[bool], None], Callable[[], None]], None]


@attrs.define(eq=False)
class _Pending:
    """A returned hook's outbox, waiting for its changes (and earlier ones) to be durable."""

    changes: Changes | None
    outbox: Outbox
    settle: Settle | None
    durable: bool = False


class OutputGate:
    """One room's outboxes in flight, in hook order."""

    __slots__ = ("_inflight", "_on_failure", "_settled")

    def __init__(self, on_failure: Callable[[], None]) -> None:
        """``on_failure()`` is called when a commit of the room fails (see ``fail``)."""
        # A list, not a deque: a few entries at most, and an idle room's gate stays small
        # (an empty deque alone is over 600 bytes, kept by every hibernated room).
        self._inflight: list[_Pending] = []
        self._settled: trio.Event | None = None  # made only when someone waits
        self._on_failure = on_failure

    @staticmethod
    def hold(
        outbox: Outbox, item: bytes | CloseConnection, recipients: Iterable[Recipient]
    ) -> None:
        """Collect ``item`` for ``recipients`` in a running hook's ``outbox``."""
        if isinstance(item, bytes):
            size = len(item)
            recipients = [conn for conn in recipients if conn.hold(size)]
            if not recipients:
                return
        outbox.append((item, recipients))

    @staticmethod
    def drop(outbox: Outbox) -> None:
        """Forget a raising hook's outbox, giving back what it held."""
        _unhold(outbox)

    def layers(self) -> list[Changes]:
        """The changes of returned hooks that are not durable yet, oldest first."""
        return [p.changes for p in self._inflight if p.changes is not None]

    def finish(
        self, changes: Changes | None, outbox: Outbox, settle: Settle | None, commit: Commit
    ) -> None:
        """A hook returned: commit its changes; release its outbox once they are durable.

        ``settle(True)`` is called when the outbox is released (``settle(False)`` if the
        store failed): the answer to a handshake waits like a send.
        """
        if changes is not None and not changes:
            changes = None  # written, then rolled back: nothing to commit
        if changes is None and not self._inflight:  # nothing to wait for: out at once
            _unhold(outbox)
            _deliver([outbox])
            if settle is not None:
                settle(True)
            return
        pending = _Pending(changes, outbox, settle)
        self._inflight.append(pending)
        if changes is None:
            pending.durable = True
            self.release()
            return
        commit(changes, functools.partial(self._committed, pending), self.release)

    def _committed(self, pending: _Pending, ok: bool) -> None:
        if ok:
            pending.durable = True
        elif self._inflight:  # the first failure resets the room; the rest are moot
            self._on_failure()

    def release(self) -> None:
        """Deliver, in hook order, every outbox whose changes and predecessors are durable."""
        inflight = self._inflight
        ready: list[_Pending] = []
        while inflight and inflight[0].durable:
            ready.append(inflight.pop(0))
        for pending in ready:
            _unhold(pending.outbox)
        _deliver([pending.outbox for pending in ready])
        for pending in ready:
            if pending.settle is not None:
                pending.settle(True)
        if not inflight and self._settled is not None:
            self._settled.set()

    def fail(self) -> None:
        """The store failed: drop every outbox in flight and refuse its handshakes."""
        for pending in self._inflight:
            _unhold(pending.outbox)
            if pending.settle is not None:
                pending.settle(False)
        self._inflight.clear()
        if self._settled is not None:
            self._settled.set()

    async def settled(self) -> None:
        """Wait until no outbox of this room is in flight."""
        while self._inflight:
            self._settled = settled = trio.Event()
            await settled.wait()
        self._settled = None


def _deliver(outboxes: list[Outbox]) -> None:
    """Queue every item of ``outboxes`` in order, then write once per connection."""
    touched: dict[Recipient, None] = {}
    for outbox in outboxes:
        for item, recipients in outbox:
            for conn in recipients:
                conn.push(item, kick=False)
                touched[conn] = None
    for conn in touched:  # one write each for everything the hooks sent it
        conn.kick()


def _unhold(outbox: Outbox) -> None:
    """Give back the bytes an outbox held against its recipients' send queues."""
    for item, recipients in outbox:
        if isinstance(item, bytes):
            size = len(item)
            for conn in recipients:
                conn.unhold(size)
