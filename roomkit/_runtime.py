"""The running server's shared parts: the front door and the room host.

:class:`Runtime` is what ``serve`` runs once it listens. Its front door reads each new
connection's request head, answers plain HTTP, and hands WebSocket upgrades to their
rooms; as the rooms' :class:`~roomkit._roomhost.RoomHost` it owns the committer, the
scheduler (alarms, sweeps, pings) and the rooms nursery, and it shuts them down in order.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection

from ._accept import Head, remote_address
from ._actor import RoomActor
from ._closecodes import CloseCode
from ._committer import Committer
from ._core.frontdoor import Response, Router, handshake_response
from ._logs import format_address
from ._metrics import Metrics, RefusalReason
from ._request import Request
from ._room import Room
from ._roomhost import TimerKey
from ._roomid import RoomId
from ._scheduler import Scheduler
from ._statistics import ServerStatistics
from ._transport import Transport
from .storage import AlarmWrite, Changes, Store

__all__ = ["FLUSH_TIMEOUT", "Handshake", "Runtime"]

logger = logging.getLogger("roomkit.server")

#: Seconds that shutdown waits for the last commit once the rooms are done: a healthy
#: disk takes milliseconds, and a stuck one must not hold the process for ever.
FLUSH_TIMEOUT: Final = 5.0
#: The part of the drain timeout, at its end, in which connections still open get their
#: close at once instead of after what their rooms still hold (a stuck commit or hook):
#: a client then hears 1001/1012, not the 1006 of a cancelled socket.
DRAIN_LAST_CALL: Final = 0.1
#: Seconds a plain-HTTP answer over TLS waits for the client's close_notify.
_TLS_CLOSE_TIMEOUT: Final = 1.0
#: What a request gets when the front door itself fails (a bug of roomkit's)...
_INTERNAL_ERROR: Final = Response(500, "Internal error").to_bytes()
#: ...and the seconds it may take to go out: a peer that does not read is dropped.
_ERROR_ANSWER_TIMEOUT: Final = 1.0
#: The close frame every connection gets at shutdown, by the code asked for.
_SHUTDOWN_REASONS: Final = {
    CloseCode.GOING_AWAY: "Going away",
    CloseCode.SERVICE_RESTART: "Service restart",
}

#: Reads a new connection's request head, through TLS if need be: see ``_accept.read_request``.
Handshake = Callable[
    [trio.abc.Stream],
    Awaitable[tuple[trio.abc.Stream, Head | Response | None, RefusalReason | None]],
]


class Runtime:
    """The parts of a running server that its tasks share: the room host."""

    def __init__(
        self,
        rooms: dict[RoomId, RoomActor],
        router: Router[type[Room]],
        store: Store,
        metrics: Metrics,
        group_commit: bool,
        handshake: Handshake,
        max_connections: int | None,
        wall_time: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        on_unhandled: Callable[[Exception], None] | None = None,
    ) -> None:
        self.wall_time: Final = wall_time
        self.jitter: Final = jitter
        self._on_unhandled = on_unhandled
        self.store = store
        self.metrics = metrics
        self._router = router
        self._handshake = handshake  # the request head, through TLS if need be
        self._max_connections = max_connections
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

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        """Run the committer, the scheduler and the rooms; shielded from ``serve``'s
        cancellation, so that shutdown can close sockets and flush storage in order."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._committer.run)
                await nursery.start(self._scheduler.run)
                await nursery.start(self._run_rooms)
                for room, due, retry in await self.store.alarms():
                    self.alarm_changed(room, AlarmWrite(due, retry))
                task_status.started()

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

    def commit(
        self,
        room: RoomId,
        changes: Changes,
        done: Callable[[bool], None],
        after: Callable[[], None],
    ) -> None:
        self._committer.submit(room, changes, done, after)

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

    def room_gone(self, room: RoomId) -> None:
        del self._rooms[room]
        self._scheduler.cancel(("sweep", room))
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
        assert isinstance(subject, RoomId)
        if kind == "sweep":
            if (actor := self._rooms.get(subject)) is not None:
                actor.sweep()
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
        self._room_for(route, room).post_alarm(alarm.retry)

    async def front_door(self, stream: trio.abc.Stream) -> None:
        """Read one request head; answer it, or hand the stream to its room.

        Whatever goes wrong here ends this connection only: a failure of roomkit's own
        (a bug) is logged with its traceback, counted (refused, ``internal_error``), and
        answered with 500 if nothing was sent yet; the stream is closed unless a room
        took it.
        """
        visit = _Visit(stream)
        try:
            await self._serve_visit(visit)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            await self._door_failed(visit)
        finally:
            if not visit.handed_off:
                await trio.aclose_forcefully(stream)

    async def _serve_visit(self, visit: _Visit) -> None:
        stream = visit.stream
        secured, head, failure = await self._handshake(stream)
        remote = visit.remote = remote_address(stream)
        if head is None:
            if failure is not None:
                self._refused(failure, None, remote)
            return  # silent, slow, gone, or not speaking TLS: nobody to answer
        visit.secured = secured
        if isinstance(head, Response):
            decision: Response | Upgrade = self._refuse(_HEAD_REFUSALS[head.status], head, remote)
        else:
            decision = self._decide(head, remote)
        full = self._max_connections is not None and self.connections >= self._max_connections
        if self._closing and not isinstance(decision, Response):
            # A head read just as shutdown began: no room takes it. (The front door
            # is cancelled by then, so the 503 goes no further than the attempt.)
            decision = self._refuse("shutting_down", Response(503, "Server shutting down"), remote)
        elif full and not isinstance(decision, Response):
            decision = self._refuse("server_full", Response(503, "Server is full"), remote)
        if isinstance(decision, Response):
            visit.answered = True
            await secured.send_all(decision.to_bytes())
            if secured is not stream:  # end TLS properly: close_notify, not a bare EOF
                with trio.move_on_after(_TLS_CLOSE_TIMEOUT):
                    await secured.aclose()
            return
        actor = self._room_for(decision.room_class, decision.room)
        actor.admit(Transport(actor, secured, decision.ws, decision.accept, decision.request))
        visit.handed_off = True

    async def _door_failed(self, visit: _Visit) -> None:
        """Log and count a failure of the front door's own; answer 500 if it still can.

        Called from an ``except`` block, whose exception is logged.
        """
        address = format_address(visit.remote)
        logger.exception("front door: serving %s failed", address, extra={"remote": address})
        self.metrics.refuse("internal_error")
        if visit.secured is None or visit.answered:
            return  # no request read (or, with TLS, no handshake done), or half answered
        gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
        with trio.move_on_after(_ERROR_ANSWER_TIMEOUT), gone:
            await visit.secured.send_all(_INTERNAL_ERROR)

    def _decide(self, read: Head, remote: tuple[str, int] | None) -> Response | Upgrade:
        head = read.request
        target = self._router.route(head)
        if isinstance(target, Response):
            if not head.is_websocket:  # plain HTTP: not a handshake
                return target
            return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
        accept = handshake_response(head)
        if isinstance(accept, Response):
            return self._refuse("bad_handshake", accept, remote)
        ws = WSConnection(ConnectionType.SERVER, trailing_data=read.rest)
        request = Request(head.path, target.room.name, head.query, head.headers, remote)
        return Upgrade(target.route, target.room, ws, accept, request)

    def _refuse(
        self, reason: RefusalReason, response: Response, remote: tuple[str, int] | None
    ) -> Response:
        """Count and log a handshake refused with ``response``; return it."""
        self._refused(reason, response.status, remote)
        return response

    def _refused(
        self, reason: RefusalReason, status: int | None, remote: tuple[str, int] | None
    ) -> None:
        """Count a refused handshake, and log it (at DEBUG: anyone can send these).

        ``status`` is the answer's; None when the client is dropped without one.
        """
        self.metrics.refuse(reason)
        if logger.isEnabledFor(logging.DEBUG):
            address = format_address(remote)
            logger.debug(
                "handshake from %s refused: %s %s",
                address,
                "dropped" if status is None else status,
                reason,
                extra={"remote": address, "status": status, "reason": reason},
            )

    def _room_for(self, room_class: type[Room], room: RoomId) -> RoomActor:
        actor = self._rooms.get(room)
        if actor is None:
            actor = RoomActor(room_class, room, self)
            self._rooms[room] = actor
            # Unless the drain is over and the rooms are being cancelled: nothing new starts.
            if not self._rooms_scope.cancel_called:
                assert self._rooms_nursery is not None
                self._rooms_nursery.start_soon(actor.run)
        return actor

    def cancel_room(self, room: RoomId) -> bool:
        """Cancel ``room``'s tasks, and no other room's (see ``RoomActor.cancel``);
        False if it is not live."""
        actor = self._rooms.get(room)
        if actor is None:
            return False
        actor.cancel()
        return True

    # For roomkit.testing.

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
        self._room_for(route, room).post_alarm(alarm.retry, done)
        await done.wait()


#: Why a request head was refused as it was read, by the status it got.
_HEAD_REFUSALS: Final[dict[int, RefusalReason]] = {431: "too_large", 400: "bad_request"}
#: Why the Router refused a WebSocket upgrade, by the status it answered with.
_ROUTE_REFUSALS: Final[dict[int, RefusalReason]] = {
    404: "not_found",
    400: "bad_room_name",
    403: "origin",
}


@attrs.define
class _Visit:
    """One connection at the front door: how far it got, for when something fails."""

    stream: trio.abc.Stream
    #: The stream to answer on (through TLS if need be), once a request head was read.
    secured: trio.abc.Stream | None = None
    remote: tuple[str, int] | None = None
    answered: bool = False  # an answer began to go out
    handed_off: bool = False  # a room took the stream


@attrs.frozen
class Upgrade:
    """A valid WebSocket handshake for ``room``, an instance of ``room_class``."""

    room_class: type[Room]
    room: RoomId
    ws: WSConnection
    accept: bytes
    request: Request
