"""The room host: the rooms of a running server, and the services they share.

:class:`Host` is what ``serve`` runs once it listens, besides the front door
(``_gateway.py``): the registry of live rooms by id, each room's task in the rooms
nursery, the group committer, the scheduler (alarms, sweeps, pings) and the rooms'
alarms. It is the rooms' :class:`~roomkit._roomhost.RoomHost`, and it shuts them down
in order. Its :class:`TestHooks` are what ``roomkit.testing`` may do besides.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import trio
from wsproto.events import CloseConnection

from ._actor import RoomActor
from ._calls import Calls
from ._closecodes import CloseCode
from ._committer import Committer
from ._core.frontdoor import Router
from ._metrics import Metrics
from ._room import Room
from ._roomhost import TimerKey
from ._roomid import RoomId
from ._scheduler import Scheduler
from ._statistics import ServerStatistics
from ._transport import Transport
from .storage import AlarmWrite, Changes, Claim, Store

__all__ = ["DRAIN_LAST_CALL", "FLUSH_TIMEOUT", "Host", "TestHooks"]

logger = logging.getLogger("roomkit.server")

#: Seconds that shutdown waits for the last commit once the rooms are done: a healthy
#: disk takes milliseconds, and a stuck one must not hold the process for ever.
FLUSH_TIMEOUT: Final = 5.0
#: The part of the drain timeout, at its end, in which connections still open get their
#: close at once instead of after what their rooms still hold (a stuck commit or hook):
#: a client then hears 1001/1012, not the 1006 of a cancelled socket.
DRAIN_LAST_CALL: Final = 0.1
#: The close frame every connection gets at shutdown, by the code asked for.
_SHUTDOWN_REASONS: Final = {
    CloseCode.GOING_AWAY: "Going away",
    CloseCode.SERVICE_RESTART: "Service restart",
}


class TestHooks(Protocol):
    """What ``roomkit.testing`` does to a running server that a client cannot.

    The host implements these; the test kit uses nothing else of the server's inside.
    """

    def room_class(self, namespace: str) -> type[Room] | None:
        """The Room class serving the rooms of ``namespace`` (a route prefix), or None."""

    def live_room(self, room: RoomId) -> Room | None:
        """The live Room instance of ``room``; None if it is not live, or sleeps."""

    async def hibernate(self, room: RoomId) -> bool:
        """Hibernate ``room`` now, and return once it has; False if it is not live."""

    async def run_alarm_now(self, room: RoomId) -> None:
        """Run ``room``'s alarm now, due or not; return once it ran and its sends are out.

        Raises:
          LookupError: if the room has no alarm set, or no route serves it.
        """


class Host:
    """The live rooms of a server and what they share: the room host.

    Args:
      rooms: the server's registry of live rooms by id (``Server`` counts it).
      router: the server's routes, for the Room class of a room an alarm wakes.
      store: the rooms' storage.
      metrics: the server's counters.
      group_commit: whether the committer writes many hooks' changes in one transaction.
      wall_time: the alarms' clock (seconds since the epoch).
      jitter: a number in [0, 1) for each alarm retry.
      on_unhandled: told of each hook error left to ``Room.on_error``'s default.
      owns: whether a room lives in this process (``Placement.owns`` of a worker):
        only the stored alarms of those rooms are scheduled here, so that each fires
        in its owner. None: every room's.
      acquire: in a cluster, the member's acquire (``Member.acquire``), which each room
        claims itself with; no stored alarm is scheduled at start then, since acquiring
        a room (its handshake's, or an orphan alarm's) schedules its alarm.
      release: in a cluster, the member's release (``Member.release``), told of the
        claim of each room that ends, so that the next client's node acquires it; not
        during shutdown, whose drain releases every room at once.

    Without ``acquire``, each room claims itself in the store as ``"<host name>:<pid>"``
    when its actor starts (see ``Store.claim``).
    """

    def __init__(
        self,
        rooms: dict[RoomId, RoomActor],
        router: Router[type[Room]],
        store: Store,
        metrics: Metrics,
        group_commit: bool,
        wall_time: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        on_unhandled: Callable[[Exception], None] | None = None,
        owns: Callable[[RoomId], bool] | None = None,
        acquire: Callable[[RoomId], Awaitable[Claim | None]] | None = None,
        release: Callable[[Claim], None] | None = None,
    ) -> None:
        self.wall_time: Final = wall_time
        self.jitter: Final = jitter
        self._on_unhandled = on_unhandled
        self._owns = owns
        self._acquire = acquire
        self._release = release
        #: Until when (Trio's clock) this process may handle events: its member's lease.
        self.valid_until = math.inf
        #: Who this process is, as the store records a room's owner.
        self.owner: Final = f"{socket.gethostname()}:{os.getpid()}"
        self.store = store
        self.metrics = metrics
        self._router = router
        self.connections = 0  # open or opening WebSocket connections, all rooms
        self._rooms = rooms  # the server's: live rooms by id
        self._committer = Committer(store, metrics, group=group_commit)
        self._scheduler = Scheduler[TimerKey](self._fire)
        self._alarms: dict[RoomId, AlarmWrite] = {}
        self._scope = trio.CancelScope(shield=True)
        self._rooms_scope = trio.CancelScope()
        self._rooms_nursery: trio.Nursery | None = None
        self._room_gone = trio.Event()
        self._closing = False
        #: The calls into the rooms of this server (``Server.rooms``, ``Room.rooms``).
        self.calls: Final = Calls(self, router, owns=owns, clustered=acquire is not None)

    @property
    def closing(self) -> bool:
        """Whether the server is shutting down: no room takes a new connection."""
        return self._closing

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        """Run the committer, the scheduler and the rooms; shielded from ``serve``'s
        cancellation, so that shutdown can close sockets and flush storage in order."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._committer.run)
                await nursery.start(self._scheduler.run)
                await nursery.start(self._run_rooms)
                if self._acquire is None:
                    await self._schedule_stored_alarms()
                task_status.started()

    async def _schedule_stored_alarms(self) -> None:
        owns = self._owns
        for room, due, retry in await self.store.alarms():
            if owns is None or owns(room):
                self.alarm_changed(room, AlarmWrite(due, retry))

    async def _run_rooms(self, task_status: trio.TaskStatus[None]) -> None:
        with self._rooms_scope:
            async with trio.open_nursery() as nursery:
                self._rooms_nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    async def shutdown(self, code: CloseCode, drain_timeout: float) -> None:
        """Close every socket with ``code``, let rooms finish, flush storage, stop.

        The drain: rooms handle what they had read and deliver what it sent, then each
        connection's close follows its last reply. In the drain's last part
        (``DRAIN_LAST_CALL``), the connections still open get their close at once,
        ahead of what their rooms still hold; at its end, what is left is cancelled.
        """
        self._closing = True
        reason = _SHUTDOWN_REASONS[code]
        deadline = trio.current_time() + drain_timeout
        with trio.move_on_at(deadline - drain_timeout * DRAIN_LAST_CALL):
            for actor in list(self._rooms.values()):
                actor.shutdown(code, reason)
            await self._rooms_gone()
        with trio.move_on_at(deadline) as drain:
            for actor in list(self._rooms.values()):
                actor.close_now(CloseConnection(code, reason))
            await self._rooms_gone()
        if drain.cancelled_caught:
            logger.warning(
                "drain timed out after %s s: cancelling %d rooms still open",
                drain_timeout,
                len(self._rooms),
            )
        self._rooms_scope.cancel()
        with trio.move_on_after(FLUSH_TIMEOUT) as flush:
            await self._committer.flush()
        if flush.cancelled_caught:
            logger.error(
                "storage flush timed out after %s s: the last commits may be lost",
                FLUSH_TIMEOUT,
            )
        self._scope.cancel()

    def statistics(self) -> ServerStatistics:
        """What the server holds right now (see ``Server.statistics``)."""
        owed = buffered = 0
        for actor in self._rooms.values():
            for conn in actor.all_connections():
                owed += conn.peer.queue.owed
                buffered += conn.peer.buffered
        return ServerStatistics(
            rooms=len(self._rooms),
            connections=self.connections,
            send_queue_bytes=owed,
            receive_buffer_bytes=buffered,
            timers=self._scheduler.timers.entries,
        )

    async def _rooms_gone(self) -> None:
        while self._rooms:
            self._room_gone = trio.Event()
            await self._room_gone.wait()

    # RoomHost: what the rooms call.

    async def claim(self, room: RoomId) -> Claim | None:
        if self._acquire is not None:
            return await self._acquire(room)
        return await self.store.claim(room, self.owner)

    def commit(
        self,
        claim: Claim,
        changes: Changes,
        done: Callable[[Exception | None], None],
        after: Callable[[], None],
    ) -> None:
        self._committer.submit(claim, changes, done, after)

    def stored_alarm(self, room: RoomId) -> AlarmWrite | None:
        return self._alarms.get(room)

    def alarm_changed(self, room: RoomId, alarm: AlarmWrite) -> None:
        if alarm.due is None:
            self._alarms.pop(room, None)
            self._scheduler.cancel(("alarm", room))
            return
        self._alarms[room] = alarm
        wait = max(0.0, alarm.due - self.wall_time())  # stored in wall-clock time
        self._scheduler.set(("alarm", room), trio.current_time() + wait)

    def set_timer(self, key: TimerKey, deadline: float, *, earlier_only: bool = False) -> None:
        self._scheduler.set(key, deadline, earlier_only=earlier_only)

    def cancel_timer(self, key: TimerKey) -> None:
        self._scheduler.cancel(key)

    def unhandled(self, error: Exception) -> None:
        if self._on_unhandled is not None:
            self._on_unhandled(error)

    def room_gone(self, room: RoomId, ended: Claim | None = None) -> None:
        del self._rooms[room]
        if ended is not None and self._release is not None and not self._closing:
            self._release(ended)
        self._scheduler.cancel(("sweep", room))
        self._scheduler.cancel(("rest", room))
        self._room_gone.set()

    def _fire(self, key: TimerKey) -> None:
        """Run what the timer ``key`` is for, in the scheduler's task.

        A failure of roomkit's own (a bug) ends what the timer was about only: a ping's
        connection is closed with 1011; the scheduler goes on with every other timer.
        """
        try:
            self._run_timer(key)
        except Exception:
            self._timer_failed(key)

    def _timer_failed(self, key: TimerKey) -> None:
        """Log and count a timer that failed; called from an ``except`` block."""
        kind, subject = key
        fields: dict[str, Any] = {"room": str(subject)}
        if isinstance(subject, Transport):
            fields = subject.log_fields()
            subject.metrics.internal_errors += 1
            subject.cut("internal_error", CloseCode.INTERNAL_ERROR, "Internal error")
        elif isinstance(subject, RoomId) and (route := self._router.route_for(subject.namespace)):
            self.metrics.room(route).internal_errors += 1
        logger.exception("room %s: %s timer failed", fields["room"], kind, extra=fields)

    def _run_timer(self, key: TimerKey) -> None:
        kind, subject = key
        if kind == "ping":
            assert isinstance(subject, Transport)
            subject.heartbeat()
            return
        if kind == "grace":  # a parked session's: it ends unresumed
            assert isinstance(subject, Transport)
            subject.grace_over()
            return
        assert isinstance(subject, RoomId)
        if kind == "sweep":
            if (actor := self._rooms.get(subject)) is not None:
                actor.sweep()
        elif kind == "rest":
            if (actor := self._rooms.get(subject)) is not None:
                actor.rest_due()
        else:
            self._alarm_due(subject)

    def _alarm_due(self, room: RoomId) -> None:
        if self._closing:
            return  # it stays stored, and runs when the server starts again
        alarm = self._alarms.pop(room, None)
        if alarm is None:
            return  # deleted since its timer was set
        route = self._router.route_for(room.namespace)
        if route is None:
            logger.warning("alarm of room %s not run: no route serves %r", room, room.namespace)
            return
        self.room_for(route, room).post_alarm(alarm.retry)

    def room_for(self, room_class: type[Room], room: RoomId) -> RoomActor:
        """The live room ``room``, made (an instance of ``room_class``) if need be."""
        actor = self._rooms.get(room)
        if actor is None:
            actor = RoomActor(room_class, room, self, self.calls)
            self._rooms[room] = actor
            # Unless the drain is over and the rooms are being cancelled: nothing new starts.
            if not self._rooms_scope.cancel_called:
                assert self._rooms_nursery is not None
                self._rooms_nursery.start_soon(actor.run)
        return actor

    def serves(self, room: RoomId) -> bool:
        """Whether ``room`` is live here and not fenced: its handshakes stay here."""
        actor = self._rooms.get(room)
        return actor is not None and not actor.fenced

    def holds(self, room: RoomId) -> bool:
        """Whether ``room`` is live here, asleep or awake."""
        return room in self._rooms

    def claims(self) -> list[Claim]:
        """The claims of the rooms live here: what a member releases when it drains."""
        return [claim for actor in self._rooms.values() if (claim := actor.claim) is not None]

    def fence_all(self) -> int:
        """This process's lease ran out: fence every room here (see ``RoomActor.lapse``);
        how many there were."""
        for actor in list(self._rooms.values()):
            actor.lapse()
        return len(self._rooms)

    def cancel_room(self, room: RoomId) -> bool:
        """Cancel ``room``'s tasks, and no other room's (see ``RoomActor.cancel``);
        False if it is not live."""
        actor = self._rooms.get(room)
        if actor is None:
            return False
        actor.cancel()
        return True

    # TestHooks, for roomkit.testing.

    def room_class(self, namespace: str) -> type[Room] | None:
        """The Room class serving the rooms of ``namespace`` (a route prefix), or None."""
        return self._router.route_for(namespace)

    def live_room(self, room: RoomId) -> Room | None:
        """The live Room instance of ``room``; None if it is not live, or hibernates."""
        actor = self._rooms.get(room)
        return None if actor is None else actor.instance

    async def hibernate(self, room: RoomId) -> bool:
        """Hibernate ``room`` now (see ``RoomActor.hibernate_now``); False if it is not live."""
        actor = self._rooms.get(room)
        if actor is None:
            return False
        await actor.hibernate_now()
        return True

    async def run_alarm_now(self, room: RoomId) -> None:
        """Run ``room``'s alarm now, due or not, and return once it has run and its
        sends are out.

        Raises:
          LookupError: if the room has no alarm set, or no route serves it (the
            message says which, to follow the room's name).
        """
        alarm = self._alarms.get(room)
        if alarm is None:
            raise LookupError("has no alarm set")
        route = self._router.route_for(room.namespace)
        if route is None:
            raise LookupError("is served by no route")
        del self._alarms[room]
        self._scheduler.cancel(("alarm", room))
        done = trio.Event()
        self.room_for(route, room).post_alarm(alarm.retry, done)
        await done.wait()
