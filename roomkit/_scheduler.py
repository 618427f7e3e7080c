"""The server's one timer task: it sleeps until the earliest deadline on Trio's clock.

The deadlines themselves are a pure heap (:class:`~roomkit._core.timers.Timers`); the
:class:`Scheduler` sleeps until the earliest one and calls back for each key that
came due. Adding an earlier deadline moves its wake-up, so nothing polls.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import trio

from ._core.timers import Timers

__all__ = ["Scheduler"]

K = TypeVar("K", bound=Hashable)


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
