"""Group commit: the writes of many hooks, of many rooms, in one store transaction.

Hooks never wait for the disk. When a hook returns, its changes are :meth:`submitted
<Committer.submit>` with a callback, and the room goes on with its next event; the
room holds back that hook's sends until the callback says the changes are durable
(the output gate). The committer's task takes everything submitted since its last
commit and writes it in one transaction: under load, one fsync serves hundreds of
hooks. With ``group=False`` it commits one hook's changes at a time (for comparison).

Each submission carries its room's :class:`~roomkit.storage.Claim`; the store refuses
the changes of a room claimed again since (by another process) and lands the rest, and
each hook is told its own outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

from ._errors import FencedError
from ._metrics import Metrics
from ._roomid import RoomId
from .storage import Changes, Claim, Store

__all__ = ["Committer"]

logger = logging.getLogger("roomkit.storage")

#: Most hooks' changes written in one transaction; bounds a commit's size and latency.
MAX_BATCH: Final = 1000

#: Told how a submission's commit went: None once durable, the FencedError that refused
#: its room's changes, or the exception that failed the whole commit.
Done = Callable[[Exception | None], None]
After = Callable[[], None]


class Committer:
    """Writes submitted changes to ``store`` in order, then reports each one done.

    Each commit's duration goes to ``metrics.commits``, and a failed one's count to
    ``metrics.commit_failures``.
    """

    def __init__(self, store: Store, metrics: Metrics, *, group: bool = True) -> None:
        self._store = store
        self._metrics = metrics
        self._batch_size = MAX_BATCH if group else 1
        self._queue: list[tuple[Claim, Changes, Done, After]] = []
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    def submit(self, claim: Claim, changes: Changes, done: Done, after: After) -> None:
        """Queue ``changes`` to ``claim``'s room; ``done(None)`` once durable, else
        ``done(error)``: the room's FencedError, or what failed the commit.

        ``after()`` is called once a batch's ``done`` calls are all made, once per batch
        however many of the batch's changes it was given with: a room releases what the
        whole batch held back at once, in one write per connection.
        """
        self._queue.append((claim, changes, done, after))
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wakeup.set()

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Commit for ever; each commit takes whatever was queued while the last one ran."""
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch = self._queue[: self._batch_size]
            del self._queue[: self._batch_size]
            started = trio.current_time()
            failed: Exception | None = None
            refused: dict[Claim, FencedError] = {}
            try:
                fenced = await self._store.commit(
                    [(claim, changes) for claim, changes, _, _ in batch]
                )
            except Exception as error:
                logger.exception(
                    "storage commit failed: %s; %d hooks' changes are lost", error, len(batch)
                )
                self._metrics.commit_failures += 1
                failed = error
            else:
                refused = {Claim(error.room, error.epoch): error for error in fenced}
            self._metrics.commits.observe(trio.current_time() - started)
            for claim, _, done, _ in batch:
                self._report(claim.room, done, failed or (refused.get(claim) if refused else None))
            for after, claim in {after: claim for claim, _, _, after in batch}.items():
                self._report(claim.room, after)

    def _report(self, room: RoomId, callback: Callable[..., None], *args: object) -> None:
        """Call one room's ``callback``: a bug in it ends that room's wait, not the
        committer (every room's commits would stop with it)."""
        try:
            callback(*args)
        except Exception:
            logger.exception("room %s: releasing a commit failed", room, extra={"room": str(room)})
