"""Deadlines by key: a pure heap of timers, one deadline per key. Pure, no I/O.

Setting a key again replaces its deadline, and memory stays proportional to the live
timers. The server's one Trio scheduler task (``_scheduler.py``) sleeps until
:meth:`Timers.next_deadline` and hands each key :meth:`Timers.pop_due` returns to
what it is for: rooms' alarms and their retries, idle sweeps and pings.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Any, Final, Generic, TypeVar

__all__ = ["Timers"]

K = TypeVar("K", bound=Hashable)


#: What a heap entry holds instead of its key once it is stale (its key was cancelled,
#: or set earlier than the entry's place): it keeps no reference to the key (a closed
#: Connection, say).
_STALE: Final = object()

#: A heap entry, ``[place, order, key, due]``: a list, so that it can change in place.
#: ``place`` is where it sits in the heap and ``due`` the key's deadline, never earlier
#: than ``place``. ``order`` is unique, so the heap never compares two keys.
_Entry = list[Any]


class Timers(Generic[K]):
    """Deadlines by key; pure. Setting a key replaces its deadline.

    Memory stays proportional to the live timers. Setting a key to a deadline no earlier
    than its entry's place in the heap (the usual case: a ping or an alarm re-armed for
    later) only changes the entry's ``due``, in O(1): when the entry surfaces, it moves
    down to its due time. Setting it earlier, or cancelling it, marks its entry stale (it
    lets go of the key at once) and pushes a new one if need be; stale entries are
    dropped as they surface, and the heap is rebuilt without them whenever they
    outnumber the live ones. So the heap holds at most twice as many entries as there
    are live timers, for an amortised O(1) more per operation.
    """

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: dict[K, _Entry] = {}
        self._stale = 0  # stale entries still in the heap
        self._counter = 0

    def __len__(self) -> int:
        return len(self._live)

    @property
    def entries(self) -> int:
        """Entries held, live or not yet discarded: what the heap costs in memory."""
        return len(self._heap)

    def set(self, key: K, deadline: float, *, earlier_only: bool = False) -> None:
        """Set ``key``'s deadline; with ``earlier_only``, only if it has none later."""
        entry = self._live.get(key)
        if entry is not None:
            if earlier_only and entry[3] <= deadline:
                return
            if entry[0] <= deadline:  # its place in the heap still comes first
                entry[3] = deadline
                return
            self._discard(entry)
        self._counter += 1
        entry = [deadline, self._counter, key, deadline]
        self._live[key] = entry
        heapq.heappush(self._heap, entry)

    def cancel(self, key: K) -> None:
        """Forget ``key``'s deadline, if it has one; nothing refers to ``key`` after."""
        entry = self._live.pop(key, None)
        if entry is not None:
            self._discard(entry)

    def next_deadline(self) -> float:
        """The earliest live deadline, or ``math.inf``."""
        heap = self._heap
        while heap:
            top = heap[0]
            if top[2] is _STALE:
                heapq.heappop(heap)
                self._stale -= 1
            elif top[0] != top[3]:  # due later than its place: move it down to its time
                self._counter += 1
                top[0], top[1] = top[3], self._counter
                heapq.heapreplace(heap, top)
            else:
                return float(top[0])
        return math.inf

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        due: list[K] = []
        while self.next_deadline() <= now:
            key = heapq.heappop(self._heap)[2]
            del self._live[key]
            due.append(key)
        if self._stale > len(self._live):
            self._compact()
        return due

    def _discard(self, entry: _Entry) -> None:
        """Mark ``entry`` stale: it lets go of its key now, and leaves the heap later."""
        entry[2] = _STALE
        self._stale += 1
        if self._stale > len(self._live):
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap without its stale entries (once they outnumber the live ones)."""
        self._heap = [entry for entry in self._heap if entry[2] is not _STALE]
        heapq.heapify(self._heap)
        self._stale = 0
