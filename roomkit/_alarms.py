"""Timers on Trio's clock: rooms' alarms, their retries, and idle sweeps.

:class:`Timers` is a pure heap of deadlines, one per key, where setting a key again
replaces its deadline. :class:`Scheduler` is the one task per server that sleeps until
the earliest deadline and calls back for each key that came due; adding an earlier
deadline moves its wake-up, so nothing polls.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

import attrs
import trio

__all__ = ["MAX_RETRIES", "AlarmInfo", "Scheduler", "Timers", "retry_delay"]

#: How often a failing ``on_alarm`` is retried before the alarm is dropped.
MAX_RETRIES: Final = 6
#: Seconds before the first retry; each later one waits twice as long (2, 4, ... 64 s).
FIRST_RETRY_DELAY: Final = 2.0
#: Up to this fraction is added to each retry delay, so that rooms failing together
#: (say, on a shared outage) do not all retry in the same instant.
RETRY_JITTER: Final = 0.25

K = TypeVar("K", bound=Hashable)


@attrs.frozen
class AlarmInfo:
    """What ``on_alarm`` is told about the alarm it handles.

    Attributes:
      retry_count: how many times this alarm was retried after ``on_alarm`` raised; 0 on
        the first run.
    """

    retry_count: int = 0

    @property
    def is_retry(self) -> bool:
        """Whether an earlier run of ``on_alarm`` for this alarm raised."""
        return self.retry_count > 0


def retry_delay(retry: int, jitter: float) -> float:
    """Seconds before retry number ``retry`` (1-based), given ``jitter`` in [0, 1)."""
    return FIRST_RETRY_DELAY * 2.0 ** (retry - 1) * (1 + RETRY_JITTER * jitter)


class Timers(Generic[K]):
    """Deadlines by key; pure. Setting a key replaces its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, tuple[float, int]] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._current)

    @property
    def entries(self) -> int:
        """Entries held, live or not yet discarded: what the heap costs in memory."""
        return len(self._heap)

    def set(self, key: K, deadline: float, *, earlier_only: bool = False) -> None:
        """Set ``key``'s deadline; with ``earlier_only``, only if it has none later."""
        current = self._current.get(key)
        if earlier_only and current is not None and current[0] <= deadline:
            return
        self._counter += 1
        self._current[key] = (deadline, self._counter)
        heapq.heappush(self._heap, (deadline, self._counter, key))

    def cancel(self, key: K) -> None:
        self._current.pop(key, None)  # its heap entry is skipped when it surfaces

    def next_deadline(self) -> float:
        """The earliest live deadline, or ``math.inf``."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else math.inf

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        due: list[K] = []
        while self.next_deadline() <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._current[key]
            due.append(key)
        return due

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._current.get(heap[0][2], (0, -1))[1] != heap[0][1]:
            heapq.heappop(heap)


class Scheduler(Generic[K]):
    """Calls ``fire(key)`` when a key's deadline passes on Trio's clock.

    ``fire`` runs in the scheduler's task and must not block; hand real work to
    another task.
    """

    def __init__(self, fire: Callable[[K], None]) -> None:
        self.timers = Timers[K]()
        self._fire = fire
        self._wakeup: trio.CancelScope | None = None

    def set(self, key: K, deadline: float, *, earlier_only: bool = False) -> None:
        self.timers.set(key, deadline, earlier_only=earlier_only)
        if self._wakeup is not None:
            self._wakeup.deadline = min(self._wakeup.deadline, deadline)

    def cancel(self, key: K) -> None:
        self.timers.cancel(key)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self.timers.next_deadline()) as wakeup:
                self._wakeup = wakeup
                await trio.sleep_forever()
            self._wakeup = None
            for key in self.timers.pop_due(trio.current_time()):
                self._fire(key)
