"""The room actor: one task per live room, handling its events one at a time.

A :class:`RoomActor` owns a room's tasks in a nursery of the room's own, run by the
room's task (:meth:`RoomActor.run`) for as long as the room is live, asleep or awake:
its event loop while awake, a task per connection it admitted, and the short tasks
that deliver its alarms. Cancelling the room (:meth:`RoomActor.cancel`) cancels those
and nothing else. Connection tasks never call hooks themselves; they put events
(connect, message, closed, alarm) on the actor's bounded channel, and the actor runs
the matching hook to completion before taking the next, in arrival order.

What the room decides lives in its pure core (``_core/room.py``): its members and
their tags, admission, the idle sweep, when it may end or hibernate, and its
lifecycle state (``_core/roomstate.py``). The actor carries the decisions out.

Each hook runs as a transaction behind the room's output gate (``_hooks.py``): what
it sends waits there until what it wrote is durable. Sends from any task but the
actor's (the reader answering bad input, an auto-response) bypass the gate.

Sessions and recovery (docs/recovery.md). A ``roomkit.v1`` connection's own turn (its
``on_connect``'s, or its resume's) begins with its welcome and the broadcasts it
missed, read from the room's log (``_core/history.py``), so that no live broadcast
comes between them. Its session parks when its socket ends abruptly, until its client
resumes it with its token (the new transport takes the Connection over) or its grace
runs out (``on_close`` then).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import trio
from wsproto.events import CloseConnection

from ._closecodes import CloseCode
from ._connection import Connection, ConnectionState, restore_presence
from ._connlog import connection_fields
from ._core import envelope
from ._core.alarms import AlarmInfo, after_failure
from ._core.calls import Chain, Kind, encode_error
from ._core.frames import encode_message
from ._core.frontdoor import Response
from ._core.history import (
    LOG_END,
    LOG_PREFIX,
    META_KEY,
    RESERVED,
    History,
    LogMark,
    ReplayLog,
    decide,
    entry,
    log_key,
    meets,
    payload_of,
    seq_of,
    upgrade,
)
from ._core.presence import Tracker, default_key, diff_frame, state_frames
from ._core.room import (
    HOOK_FAILED,
    INTERNAL_ERROR,
    ROOM_MOVED,
    SHUTTING_DOWN,
    Refusal,
    RoomCore,
)
from ._core.roomstate import Change, RoomState
from ._errors import Reject, RoomCallCycle, RoomCallTimeout
from ._events import (
    Alarm,
    Call,
    Check,
    Closed,
    Connect,
    Cut,
    Drain,
    Event,
    Expire,
    HttpRequest,
    Message,
    Rest,
)
from ._hooks import HookRunner
from ._request import Request
from ._room import Room, instantiate
from ._roomhost import RoomHost, TimerKey
from ._roomid import RoomId
from ._storage import Storage, read_reserved
from ._stubs import CallBackend, Rooms
from ._transport import Transport
from .storage import AlarmWrite, Changes, Claim, KeyRange

__all__ = ["RoomActor"]

logger = logging.getLogger("roomkit.room")

#: Events a room may have waiting before the connections feeding it wait too: a slow
#: room slows its own readers (TCP backpressure) instead of growing memory.
EVENT_QUEUE: Final = 256
#: Events handled back to back before the room yields to the other tasks once.
EVENTS_PER_CHECKPOINT: Final = 32


#: What a room without a protocol sends as it is (a tuple: isinstance on it is cheaper
#: than on a union, and this runs per send).
_RAW: Final = (str, bytes)

#: The events that _post queues, expected by the room core until the loop takes them.
_POSTED: Final = (Alarm, Drain, Expire)

#: The states checked per message, as names of their own (a global is a cheaper lookup).
_ASLEEP: Final = RoomState.ASLEEP
_DRAINING: Final = RoomState.DRAINING
_OPEN: Final = ConnectionState.OPEN
_AWAY: Final = ConnectionState.AWAY
#: The states of a session another handshake may take up with its token: parked, or
#: live on a socket not known to be dead yet (socket.io #4880: the new one wins).
_RESUMABLE: Final = (ConnectionState.AWAY, ConnectionState.OPEN)
#: The reasons on_close is told when a connection the room had counted in is refused
#: after all (1011, as for the room's other connections in the same failures).
_TURN_FAILED: Final = "Internal error"
_COMMIT_FAILED: Final = "Storage failure"

#: What a plain request gets when on_request raised or returned no Response...
_REQUEST_FAILED: Final = Response(500, "Internal error")
#: ...when the room is gone under it (cancelled) before its turn ran...
_REQUEST_REFUSED: Final = Response(503, "Service unavailable")
#: ...or once its turn ran, with its commit in flight: its writes may land...
_REQUEST_UNKNOWN: Final = Response(500, "Internal error: the outcome is unknown")
#: ...when the room shuts down: its writes could never be acknowledged...
_REQUEST_SHUT_OUT: Final = Response(SHUTTING_DOWN.status, SHUTTING_DOWN.text)
#: ...and when another process claimed the room: it lives there now.
_REQUEST_MOVED: Final = Response(ROOM_MOVED.status, ROOM_MOVED.text)

#: A task of the room's, started in its nursery.
_Task = Callable[[], Awaitable[None]]


def _session_of(conn: Transport) -> str:
    """The name of a roomkit.v1 connection's session: that of the token it was welcomed
    with, or came with; made now for one that has neither yet (its welcome's token
    then keeps it)."""
    token = conn.session or conn.resume.session
    if token is None:
        conn.session = token = envelope.new_token()  # no key of the room's sessions (yet)
    return envelope.session_name(token)


class RoomActor:
    """The live room ``room``: its connections, tags, instance, storage and event loop.

    Args:
      room_class: the Room subclass to instantiate.
      room: the room's identity.
      host: the server's services: the store, the committer, alarms and sweeps.
      calls: the server's calls into rooms, for the room's own (``Room.rooms``).
    """

    # Slots: thousands of hibernated rooms each keep one of these.
    __slots__ = (
        "_calls",
        "_cancelled",
        "_chain",
        "_core",
        "_counted",
        "_enveloped",
        "_hibernated",
        "_hooks",
        "_host",
        "_nursery",
        "_presence",
        "_receive",
        "_rest_due",
        "_resuming",
        "_send",
        "_sessions",
        "_settling",
        "_starting",
        "_turns",
        "_waiting_since",
        "auto_response",
        "auto_response_enveloped",
        "metrics",
        "room",
        "room_class",
        "store",
    )

    def __init__(
        self, room_class: type[Room], room: RoomId, host: RoomHost, calls: CallBackend
    ) -> None:
        self.room_class: Final = room_class
        self.room: Final = room
        self.store: Final = host.store
        self.metrics: Final = host.metrics.room(room_class)
        self._host = host
        self._core = RoomCore[Transport](room_class.max_connections, room_class.idle_timeout)
        # The room's nursery, once its task runs; the tasks to start in it until then.
        self._nursery: trio.Nursery | None = None
        self._starting: list[_Task] | None = []
        self._cancelled = False  # cancel() came before the room's task ran
        # The event channel exists while the room is awake, and is dropped when it
        # hibernates (a channel is over 1 KiB): _wake() makes it again.
        self._send: trio.MemorySendChannel[Event] | None = None
        self._receive: trio.MemoryReceiveChannel[Event] | None = None
        self._hooks = HookRunner(host, room, self.metrics, self)
        self._hibernated: trio.Event | None = None  # set when hibernate_now() is waiting
        # How the loop's wait for an event ends when none comes: the events it has
        # taken, since when it waits (None: it is busy), and when the server's rest
        # timer for the room is due (infinite: none is set). See _wait.
        self._turns = 0
        self._waiting_since: float | None = None
        self._rest_due = math.inf
        self._calls = calls
        self._chain: Chain | None = None  # the running call's turn's (see Room.rooms)
        #: Calls and plain requests whose turn is done and whose commit is in flight:
        #: answered by ``_abandon`` if the room is cancelled before it settles (a
        #: tuple: most rooms hold none, and share the empty one).
        self._settling: tuple[Call | HttpRequest, ...] = ()
        # The roomkit.v1 connections among the members (none: broadcasts take the
        # plain path alone), and every session's by its current token (made with the
        # first: most rooms hold none).
        self._enveloped = 0
        self._sessions: dict[str, Transport] | None = None
        self._resuming: Connection | None = None  # the session its turn takes up again
        # The Connection whose own turn runs and whom the room has counted in: a resumed
        # session's from the start (its on_connect ran when it first connected), a
        # fresh one's once its on_connect has returned. If the turn then fails, the
        # room hears it leave (on_close), as it hears every connection it counted in.
        self._counted: Connection | None = None
        # Who is here (docs/presence.md), made when a connection first sets a presence:
        # a room whose connections never do pays nothing for it. It lives here, not on
        # the Room instance, so it sleeps with the connections when the room hibernates.
        self._presence: Tracker | None = None
        response = room_class.auto_response
        #: The auto-response pair, the answer already framed (plain, and enveloped).
        self.auto_response = (
            None if response is None else (response[0], encode_message(response[1]))
        )
        self.auto_response_enveloped = (
            None if response is None else (response[0], envelope.encode(response[1], None))
        )

    @property
    def awake(self) -> bool:
        """Whether the room's instance is in memory (its event loop runs)."""
        return self._core.state not in (RoomState.ASLEEP, RoomState.GONE)

    @property
    def instance(self) -> Room | None:
        """The room's live Room instance; None while it sleeps (or before its first event)."""
        return self._hooks.instance

    @property
    def name(self) -> str:
        return self.room.name

    @property
    def fenced(self) -> bool:
        """Whether the room may be another process's: it serves no one here again."""
        return self._hooks.fenced

    @property
    def claim(self) -> Claim | None:
        """The room's claim in the store, once it has one (and until it is fenced)."""
        return None if self._hooks.fenced else self._hooks.claim

    # The room's task and its nursery.

    async def run(self) -> None:
        """Run the room's nursery until the room ends, or is cancelled (:meth:`cancel`).

        Its event loop, its connections' tasks and its alarm deliveries run in it; the
        room's end waits for the last of them to return. The task waits for the end by
        the lowest means Trio has (``_rest`` reschedules it): a hibernated room keeps
        this task, so each object it waits on is paid by every sleeping room.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            starting, self._starting = self._starting, None
            assert starting is not None
            for task in starting:
                nursery.start_soon(task)
            if self._cancelled:
                nursery.cancel_scope.cancel()
            try:
                await trio.lowlevel.wait_task_rescheduled(_cancellable)
            finally:
                if self._core.state is not RoomState.GONE:
                    self._abandon()

    def cancel(self) -> None:
        """Cancel the room's tasks, and only them: its event loop, its connections
        (dropped, without a close frame or ``on_close``) and its alarm deliveries. The
        room leaves the server at once; a new handshake for its name makes a new room."""
        if self._nursery is None:
            self._cancelled = True
        else:
            self._nursery.cancel_scope.cancel()

    def spawn(self, task: _Task) -> None:
        """Start ``task`` in the room's nursery (as soon as the room's task runs)."""
        if self._nursery is None:
            assert self._starting is not None
            self._starting.append(task)
        else:
            self._nursery.start_soon(task)

    def _abandon(self) -> None:
        """The room was cancelled: it is gone, and whoever still sends to it finds its
        channel closed instead of waiting on a loop that will never read it."""
        self._core.change(Change.CANCEL)
        for conn in self.all_connections():  # dropped: no longer the server's to count
            self._forget(conn)
        if self._receive is None:
            self._send, self._receive = trio.open_memory_channel[Event](0)
        self._refuse_queued(self._receive)
        self._receive.close()
        for event in self._settling:  # their commit will not be heard of: it may land
            if isinstance(event, Call):
                why = "the room was cancelled as the call's writes committed"
                event.answer_with(encode_error("error", "RoomCallError", why, None))
            else:
                event.answer(_REQUEST_UNKNOWN)  # not 503: that says it had no effect
        self._settling = ()
        self._host.room_gone(self.room)
        self._wake_waiters()

    # Entry points for the server and the connections.

    def admit(self, conn: Transport) -> None:
        """Take ownership of a new connection and start its task."""
        self._core.join(conn)
        self._host.connections += 1
        if conn.enveloped:
            self._enveloped += 1
        self.spawn(conn.run)

    def shutdown(self, code: CloseCode, reason: str) -> None:
        """Close every connection with ``code`` and refuse new ones with 503.

        What the connections read from now on is not handled; the events already
        queued run, their commits finish, and their sends go out before the closes.
        """
        self._wake()  # a room asleep wakes to shut down
        self._core.change(Change.SHUTDOWN)
        for conn in self._core.members():
            conn.drain()
        self._post_soon(Drain(CloseConnection(code, reason)))

    def lapse(self) -> None:
        """This process's lease ran out: the room may be another's already. Fence it
        here (see ``HookRunner.lapse``): its clients get 1012, no hook runs again."""
        self._hooks.lapse()

    def close_now(self, frame: CloseConnection) -> None:
        """Close every connection with ``frame`` at once, ahead of what the room holds
        for it: the end of a drain that ran out of time, or one that failed."""
        for conn in self.all_connections():
            conn.push(frame)

    def close_behind(self, conns: Sequence[Transport], frame: CloseConnection) -> None:
        """Close ``conns`` with ``frame`` after what the room has released or still holds
        for them at the output gate."""
        self._hooks.close_behind(conns, frame)

    async def cut(self, conn: Transport, frame: CloseConnection) -> None:
        """Close ``conn`` (for the reader) after the messages it has already delivered."""
        await self._wake().send(Cut(conn, frame))

    def sweep(self) -> None:
        """Close the connections idle for ``idle_timeout``; schedule the next sweep."""
        idle, due = self._core.sweep(trio.current_time(), self.members())
        for conn in idle:
            conn.cut("idle", CloseCode.NORMAL_CLOSURE, "Idle timeout")
        if due is not None:
            self._host.set_timer(("sweep", self.room), due)

    async def connect(self, conn: Transport) -> tuple[int, str] | None:
        """Run ``on_connect``; return None to accept, or the ``(status, reason)`` to refuse."""
        event = Connect(conn)
        send = self._wake()
        try:
            send.send_nowait(event)  # the wait below is this task's one trip, not two
        except trio.WouldBlock:
            await send.send(event)
        await event.decided.wait()
        return event.rejection

    async def message(self, conn: Transport, message: Any) -> None:
        send = self._wake()
        event = Message(conn, message)
        try:
            send.send_nowait(event)  # no trip through the scheduler if there is room
        except trio.WouldBlock:
            await send.send(event)  # the room is behind: this reader waits for it

    async def request(self, request: Request) -> Response:
        """Run ``on_request`` for ``request`` as one turn, in order with the room's
        other events; its response once the turn's writes are durable.

        The room wakes for it, or starts (then ends when idle if nobody is connected).
        The answer is 500 if on_request raised or returned no Response (``on_error``
        runs), 503 if the room shuts down, was fenced, or was cancelled first.

        Raises:
          trio.BrokenResourceError, trio.ClosedResourceError: if the room ended before
            it took the request: ask the host for the room again.
        """
        event = HttpRequest(request)
        await self._wake().send(event)
        await event.answered.wait()
        assert event.response is not None, "answered"
        return event.response

    async def call(self, event: Call) -> None:
        """Queue the call ``event``; its ``answered`` is set once it has its answer.

        Raises:
          trio.BrokenResourceError, trio.ClosedResourceError: if the room is gone (it
            ended since it was looked up): look it up again.
        """
        await self._wake().send(event)

    def post_alarm(self, retry: int, done: trio.Event | None = None) -> None:
        """Queue an alarm event from synchronous code; the room stays up until it is queued.

        ``done``, if given, is set once the alarm has run and its sends are out.
        """
        self._post_soon(Alarm(retry, done))

    def expire(self, conn: Transport) -> None:
        """The grace of ``conn``'s parked session is over: its on_close runs (the
        scheduler's; the room stays up until the event is queued)."""
        self._post_soon(Expire(conn))

    def close_parked(self, conn: Transport, code: int, reason: str) -> None:
        """The room closes ``conn``'s parked session (a kick, a ban): its token is spent
        now, so that its client cannot come back round the close, and its on_close runs
        next, with the room's close. A second close finds the token spent: nothing."""
        sessions, token = self._sessions, conn.session
        if sessions is None or token is None or sessions.get(token) is not conn:
            return
        del sessions[token]
        self._host.cancel_timer(("grace", conn))
        conn.peer.closed_by_room(code, reason)
        self._post_soon(Expire(conn))

    def _post_soon(self, event: Alarm | Drain | Expire) -> None:
        """Queue ``event`` from synchronous code; the room stays up until it is queued."""
        self._core.expect()
        self.spawn(functools.partial(self._post, event))

    async def _post(self, event: Alarm | Drain | Expire) -> None:
        # The loop counts the event off when it takes it: counted here, once this task
        # resumes, the loop could have found itself idle with the event already handled.
        queued = False
        try:
            await self._wake().send(event)
            queued = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if isinstance(event, Alarm) and event.done is not None:
                event.done.set()  # the room is gone: nobody will run it
        finally:
            if not queued:
                self._core.arrived()

    async def closed(self, conn: Transport) -> None:
        """Report that ``conn`` has closed; ``on_close`` will run."""
        # Broken or closed: the room itself was cancelled, and nobody is left to tell.
        gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
        with gone:
            try:  # without a wait, no shield is needed: the usual case, a scope saved
                self._wake().send_nowait(Closed(conn))
            except trio.WouldBlock:  # the room is behind: wait, even when cancelled
                with trio.CancelScope(shield=True):
                    await self._wake().send(Closed(conn))

    def _wake(self) -> trio.MemorySendChannel[Event]:
        """Start the event loop if the room is asleep; its event channel.

        Once the room is gone the channel stays closed: a send raises BrokenResourceError.
        """
        if self._core.state is _ASLEEP:
            self._core.change(Change.WAKE)
            self._send, self._receive = trio.open_memory_channel[Event](EVENT_QUEUE)
            self.spawn(self._event_loop)
        send = self._send
        assert send is not None  # made when the room woke
        return send

    async def _event_loop(self) -> None:
        """Handle events until the room is gone, or has been idle for ``hibernate_after``.

        Hibernating drops the Room instance and ends this task; the connections, their
        tags and attachments, and the alarm stay. The next event starts a new loop,
        which makes a new instance (``on_start``) before handling it.
        """
        self._hooks.task = trio.lowlevel.current_task()
        receive = self._receive
        assert receive is not None  # made by the _wake() that started this loop
        in_a_row = 0
        while True:
            event = None
            try:  # queued events are taken without a trip through the scheduler...
                event = receive.receive_nowait()
                in_a_row += 1
                if in_a_row % EVENTS_PER_CHECKPOINT == 0:
                    await trio.lowlevel.checkpoint()  # ...but never so many that others starve
            except trio.WouldBlock:
                in_a_row = 0
                patience = self._patience()
                if patience <= 0:  # hibernate_now: rest now, but let what is on its way come
                    await trio.lowlevel.checkpoint()
                else:
                    self._wait(patience)
                    try:
                        event = await receive.receive()
                    finally:
                        self._waiting_since = None
            if type(event) is Rest:
                if event.turns != self._turns and not self._idle(receive):
                    continue  # it took an event since: it waits its patience again
                event = None  # (stale, but left empty: it ends, as after any event)
            if event is not None:
                self._turns += 1
                try:
                    await self._handle(event)
                except Exception:
                    self._event_failed(event)
                if self._presence is not None and self._presence.pending:
                    self._flush_presence()  # the turn's diff, behind its sends
                if not self._idle(receive):
                    continue
            await self._hooks.settle()  # no commit of this room may be left in flight
            change = None if receive.statistics().current_buffer_used else self._core.at_rest()
            if change is not None:
                self._rest(change, receive)
                return

    def _patience(self) -> float:
        """Seconds the loop waits for an event before the room hibernates."""
        if self._core.state is not RoomState.AWAKE:
            return math.inf  # a room shutting down stays awake until it ends
        if self._hibernated is not None:
            return 0  # hibernate_now: at once
        idle_for = self.room_class.hibernate_after
        return math.inf if idle_for is None else idle_for

    def _wait(self, patience: float) -> None:
        """The loop is about to wait for its next event: it rests (hibernates, or ends)
        if none comes within ``patience`` seconds.

        A wait is a room's most frequent moment, so it costs a clock read and no cancel
        scope: the server's timer for the room (``rest_due``) is set only when none is,
        about once every ``patience`` under steady traffic, and when it comes due early
        it is set again for the wait that is under way.
        """
        self._waiting_since = now = trio.current_time()
        if patience != math.inf and self._rest_due == math.inf:
            self._rest_due = now + patience
            self._host.set_timer(("rest", self.room), self._rest_due)

    def rest_due(self) -> None:
        """The scheduler's: the room's rest timer came due. If its loop has waited its
        whole patience since it last took an event, the loop is told to rest (``Rest``);
        if it is waiting for less, the timer is set again for then; if it is busy, its
        next wait sets it."""
        self._rest_due = math.inf
        since = self._waiting_since
        if since is None or self._send is None:
            return
        due = since + self._patience()
        if due <= trio.current_time():
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                self._send.send_nowait(Rest(self._turns))
        elif due != math.inf:
            self._rest_due = due
            self._host.set_timer(("rest", self.room), due)

    def _idle(self, receive: trio.MemoryReceiveChannel[Event]) -> bool:
        if not self._core.quiet:  # the common case, known without statistics
            return False
        return not receive.statistics().current_buffer_used

    def _rest(self, change: Change, receive: trio.MemoryReceiveChannel[Event]) -> None:
        """Hibernate, or end: the room's events are handled and its commits durable.

        Not once the room's nursery is cancelled (a drain that runs out cancels every
        room at once, some just as they come to rest): the room's task ends it then
        (``_abandon``), and may have already, when this loop was not blocked to see
        the cancellation; resting as well ended a room twice, or rescheduled its task
        a second time.
        """
        if trio.current_effective_deadline() == -math.inf:
            return
        self._core.change(change)
        self._hooks.rest()
        if change is Change.HIBERNATE:  # the next event makes a new channel
            self._send = self._receive = None
        else:  # the room is gone: senders find the channel closed
            receive.close()
            self._host.room_gone(self.room, ended=self.claim)
            assert self._nursery is not None  # the loop runs in it
            trio.lowlevel.reschedule(self._nursery.parent_task)  # the room's task returns
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Tell hibernate_now() and settle(), if they wait, that the room sleeps or ended."""
        if self._hibernated is not None:
            self._hibernated.set()
            self._hibernated = None
        self._hooks.wake_settle()

    # What the Room's methods, its storage and the Connection's send/close call.

    def all_connections(self) -> list[Transport]:
        """Every connection the room holds, whatever its state."""
        return list(self._core.members())

    def members(self, tag: str | None = None) -> list[Transport]:
        """The open connections, or those carrying ``tag``, in join order."""
        return [c for c in self._core.members(tag) if c.state is _OPEN]

    def connections(self, tag: str | None = None) -> list[Connection]:
        """``members(tag)`` as the hooks see them."""
        return [c.handle for c in self.members(tag)]

    def retag(self, conn: Transport, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """Move ``conn`` from ``old`` tags to ``new`` in the index, while it is in the room."""
        self._core.retag(conn, old, new)

    def track(self, conn: Transport, presence: str | None) -> None:
        """Track ``conn`` under its room's key for it with ``presence`` (JSON), or untrack
        it; the diff goes out at the end of the running turn, or at once outside one."""
        tracker = self._presence
        if tracker is None and presence is None:
            return  # nobody was ever tracked: nothing to untrack
        handle = conn.handle
        key = ""
        if presence is not None:
            room = self._hooks.instance
            key = default_key(handle.id, handle.tags) if room is None else room.presence_key(handle)
            if not isinstance(key, str):
                raise TypeError(f"presence_key returned {type(key).__name__}, not a str")
        hooks = self._hooks
        outside = hooks.outbox is None or trio.lowlevel.current_task() is not hooks.task
        if tracker is None:
            self._presence = tracker = Tracker()
            if not outside:
                tracker.begin()  # made by a running hook, whose rollback undoes it
        tracker.track(handle.id, key, presence, turn=not outside)
        if outside:
            self._flush_presence()

    def presence_began(self) -> None:
        """A hook's transaction starts: its presence changes follow it."""
        if self._presence is not None:
            self._presence.begin()

    def presence_rolled_back(self) -> None:
        """The running hook raised: the presence goes back to what it was before it
        (with each connection's ``conn.presence``), and no diff tells of its changes."""
        if self._presence is None:
            return
        restored = self._presence.rollback()
        if restored:
            for conn in self._core.members():
                if conn.handle.id in restored:
                    restore_presence(conn.handle, restored[conn.handle.id])

    def presence_ended(self) -> None:
        """The hook's transaction ended."""
        if self._presence is not None:
            self._presence.end()

    def presence(self) -> dict[str, list[dict[str, Any]]]:
        """Every presence key of the room and its metas, in the room's order (copies)."""
        return {} if self._presence is None else self._presence.state()

    def _flush_presence(self) -> None:
        """Send the roomkit.v1 members the presence diff since the last, behind what the
        gate holds for them (never logged)."""
        assert self._presence is not None
        diff = self._presence.flush()
        if diff is None or not self._enveloped:
            return
        wrapped = [c for c in self.members() if c.enveloped]
        if wrapped:
            self._hooks.send_behind(diff_frame(diff), wrapped)

    def encode(self, message: Any) -> bytes:
        """The frame for ``message``, encoded by the room's protocol when it is typed."""
        return encode_message(message if isinstance(message, _RAW) else self._typed(message))

    def encode_enveloped(self, message: Any) -> bytes:
        """``message``'s frame in the roomkit.v1 envelope, unlogged (``conn.send``)."""
        payload = message if isinstance(message, _RAW) else self._typed(message)
        return envelope.encode(payload, None)

    def _typed(self, message: Any) -> str:
        """The text of a message of the room's protocol."""
        protocol = self.room_class.protocol
        if protocol is None:
            raise TypeError(
                f"a room without a protocol sends str or bytes, not "
                f"{type(message).__name__}; set {self.room_class.__name__}.protocol"
            )
        return protocol.server.encode(message)

    def broadcast(
        self,
        message: Any,
        tag: str | None,
        exclude: Connection | Iterable[Connection] | None,
        volatile: bool,
    ) -> int:
        payload = message if isinstance(message, _RAW) else self._typed(message)
        frame = encode_message(payload)
        recipients = self.members(tag)
        left_out: set[Connection] | None = None
        if exclude is not None:
            left_out = {exclude} if isinstance(exclude, Connection) else set(exclude)
            recipients = [c for c in recipients if c.handle not in left_out]
        seq = None
        hooks = self._hooks
        log = hooks.log
        if (
            log is not None
            and not volatile
            and hooks.outbox is not None
            and trio.lowlevel.current_task() is hooks.task
        ):
            seq = self._logged(log, payload, tag, left_out)
        if not self._enveloped:  # no roomkit.v1 member: the plain path, as it always was
            self.emit(frame, recipients)
            return len(recipients)
        plain = [c for c in recipients if not c.enveloped]
        if plain:
            self.emit(frame, plain)
        if len(plain) < len(recipients):
            wrapped = [c for c in recipients if c.enveloped]
            self.emit(envelope.encode(payload, seq), wrapped)
        return len(recipients)

    def _logged(
        self,
        log: ReplayLog,
        payload: str | bytes,
        tag: str | None,
        left_out: set[Connection] | None,
    ) -> int:
        """Number and log a broadcast in the running hook's changes; its seq. Those
        ``left_out`` are by id, and by session for their clients' next connections."""
        now = self.wall_time()
        excluded: list[str] = []
        sessions: list[str] = []
        if left_out:
            excluded = sorted(c.id for c in left_out)
            members = (c for c in self._core.members() if c.handle in left_out)
            sessions = sorted({_session_of(c) for c in members if c.enveloped})
        seq, writes = log.append(now, entry(now, tag, excluded, sessions, payload))
        self._hooks.current_changes().writes.update(writes)
        return seq

    def storage_cleared(self) -> None:
        """The running hook is clearing the room's storage, its log with it."""
        log = self._hooks.log
        if log is not None:
            log.clear(self._hooks.current_changes().writes)

    def block_began(self) -> LogMark | None:
        """Where the room's log is as a ``storage.transaction()`` block begins."""
        log = self._hooks.log
        return None if log is None else log.block()

    def block_rolled_back(
        self, block: LogMark | None, writes: dict[str, str | None]
    ) -> dict[str, str | None]:
        """The block begun at ``block`` is rolled back: the log's ``writes`` that stand."""
        log = self._hooks.log
        if log is None or block is None:
            return {key: value for key, value in writes.items() if key.startswith(RESERVED)}
        return log.rolled_back(block, writes)

    def resumed(self, conn: Connection) -> bool:
        """Whether ``conn``'s running turn took up its parked session (no on_connect)."""
        return self._resuming is conn

    def emit(self, item: bytes | CloseConnection, recipients: Sequence[Transport]) -> None:
        """Queue ``item`` for ``recipients``, through the output gate when a hook is running.

        The gate counts what it holds against each recipient's ``max_send_queue`` and
        keeps a frame only for recipients with room for it, so what one hook sends stays
        bounded however much it broadcasts.
        """
        hooks = self._hooks
        outbox = hooks.outbox
        if outbox is None or trio.lowlevel.current_task() is not hooks.task:
            for conn in recipients:
                conn.push(item)
            return
        hooks.gate.hold(outbox, item, recipients)

    def current_changes(self) -> Changes:
        """The running hook's changes, for writes; raises outside a hook."""
        return self._hooks.current_changes()

    def storage_layers(self) -> list[Changes]:
        """The changes not yet durable, oldest first (see ``HookRunner``)."""
        return self._hooks.storage_layers()

    def wall_time(self) -> float:
        return self._host.wall_time()

    def stored_alarm(self) -> AlarmWrite | None:
        return self._host.stored_alarm(self.room)

    # The event loop.

    async def _handle(self, event: Event) -> None:
        if isinstance(event, _POSTED):
            self._core.arrived()  # on its way no longer (see _post)
        until = self._host.valid_until  # infinite but in a cluster: no clock read then
        if until != math.inf and trio.current_time() >= until:
            # Before any event: a process resumed after a stop past its lease must not
            # run one stale event before its member's watcher has fenced every room.
            self._hooks.lapse()
        if isinstance(event, Connect):
            await self._handle_connect(event)
        elif isinstance(event, Message):
            # Delivered even if the connection has started closing since: the peer sent
            # it while open, and on_close comes after every message read before it. But
            # not once the drain has closed it: its writes could never be acknowledged.
            if self._core.state is _DRAINING:
                return
            hooks = self._hooks
            if hooks.instance is not None or await self._room() is not None:
                await hooks.run(event.conn, "on_message", event.conn.handle, event.message)
        elif isinstance(event, Cut):
            self.close_behind((event.conn,), event.frame)
        elif isinstance(event, Drain):
            self._core.change(Change.DRAIN)
            members = self.all_connections()
            self.close_behind(members, event.frame)
            for conn in members:  # no client resumes from a server that stops
                if conn.state is _AWAY:
                    await self._end_session(conn)
        elif isinstance(event, Closed):
            conn = event.conn
            if conn.superseded:
                return  # the late end of a socket whose session another one carries on
            if conn.state is _AWAY:
                if self._core.state is RoomState.AWAKE and not self._hooks.fenced:
                    grace = self.room_class.session_grace
                    assert grace is not None, "only a room with a grace parks"
                    self._host.set_timer(("grace", conn), trio.current_time() + grace)
                    return  # parked: on_close runs when the grace ends
                conn.end_parked()
            self._forget(conn)
            if await self._room() is not None:
                await self._hooks.run(conn, "on_close", conn.handle, *conn.peer.report)
        elif isinstance(event, Expire):
            if event.refused is not None:
                await self._end_refused(event.conn, event.refused)
            elif event.conn.state is _AWAY and not event.conn.superseded:
                await self._end_session(event.conn)
        elif isinstance(event, HttpRequest):
            await self._handle_request(event)
        elif isinstance(event, Alarm):
            await self._handle_alarm(event)
            if event.done is not None:  # roomkit.testing waits until its sends are out
                await self._hooks.settle()
                event.done.set()
        elif isinstance(event, Call):
            await self._handle_call(event)

    async def _end_session(self, conn: Transport) -> None:
        """A parked session ends unresumed: ``on_close`` with how its socket ended."""
        self._host.cancel_timer(("grace", conn))
        conn.end_parked()
        self._forget(conn)
        if await self._room() is not None:
            await self._hooks.run(conn, "on_close", conn.handle, *conn.peer.report)

    async def _handle_connect(self, event: Connect) -> None:
        refusal = self._core.admission(resume=self._resumable(event.conn) is not None)
        if refusal is None and await self._room() is None:
            refusal = ROOM_MOVED if self._hooks.fenced else HOOK_FAILED
        if refusal is None:
            await self._on_connect(event)
            return
        self._refuse(event, refusal)
        self._forget(event.conn)
        event.decided.set()

    async def _on_connect(self, event: Connect) -> None:
        """Run the handshake's own turn (``on_connect``, or the resume of its session);
        it is answered once the turn's changes are durable, or refused now.

        A turn that fails once the room has counted the connection in (a resumed
        session, or a fresh one whose on_connect returned: then ``on_resync`` raised,
        or the replay could not be read) refuses the handshake with 500, and the room
        hears the connection leave: its presence leaves, and ``on_close`` runs with
        1011 "Internal error", ``was_clean=False``.
        """
        conn = event.conn
        # Open while its own on_connect runs (it is among connections(), sends to it are
        # queued for after the handshake); handshakes still waiting are not.
        conn.open()
        old = self._resumable(conn)
        if old is not None:  # the same Connection, on this socket now
            tags = old.tags
            self._host.cancel_timer(("grace", old))
            self._forget(old, leaves=False)  # the session stays: its presence with it
            conn.take_over(old)
            self._counted = conn.handle  # whatever fails from here, the room hears it leave
            conn.tags = tags
            self._core.retag(conn, (), tags)
        settle = functools.partial(self._connect_settled, event, old is not None)
        turn = functools.partial(self._connect_turn, conn, old is not None)
        error = await self._hooks.transaction("on_connect", call=turn, settle=settle)
        counted = self._counted is conn.handle  # reset once the handshake is decided:
        if error is None:  # until then, _event_failed ends a counted one's session
            due = self._core.joined(conn)
            if due is not None:  # a newcomer never brings the sweep forward, but it may
                self._host.set_timer(("sweep", self.room), due, earlier_only=True)  # be first
            self._counted = None
            return  # decided when its changes are durable
        if isinstance(error, Reject) and not counted:
            self._refuse(event, Refusal("rejected", error.status, error.reason))
        else:
            self._refuse(event, HOOK_FAILED)
            await self._hooks.report(conn, error)
        conn.reject()
        self._forget(conn)
        event.decided.set()
        self._counted = None
        if counted:
            await self._end_refused(conn, _TURN_FAILED)

    async def _end_refused(self, conn: Transport, reason: str) -> None:
        """The room had counted ``conn`` in, and its handshake was refused after all (its
        turn failed, or its commit): ``on_close`` with 1011 and ``reason``, unclean."""
        if await self._room() is not None:
            close = (CloseCode.INTERNAL_ERROR, reason, False)
            await self._hooks.run(conn, "on_close", conn.handle, *close)

    def _resumable(self, conn: Transport) -> Transport | None:
        """The session ``conn``'s handshake takes up with its token, if there is one to
        take: at most once (forgetting the old transport spends the token), and only a
        roomkit.v1 one's."""
        token, sessions = conn.resume.session, self._sessions
        if token is None or sessions is None or not conn.enveloped:
            return None
        if self.room_class.session_grace is None:
            return None
        old = sessions.get(token)
        if old is None or old is conn or old.state not in _RESUMABLE:
            return None
        return old  # its token is spent when it leaves the room's sessions

    async def _connect_turn(self, conn: Transport, resumed: bool) -> None:
        """A connection's own turn: its welcome and the broadcasts it missed (a
        roomkit.v1 one's), then what ``on_connect`` sent (not for a resumed session),
        then ``on_resync`` if it asked to recover and cannot be (``recovered: false``).

        A fresh connection's ``on_connect`` runs first, for the tags the replay is
        filtered by; what it sent is held back behind the welcome and the replay. The
        position the welcome gives is the one before it: what it broadcasts is live.
        """
        room = self._hooks.instance
        outbox = self._hooks.outbox
        assert room is not None and outbox is not None, "the turn runs on the room's instance"
        handle = conn.handle
        recovered: bool | None = None
        if not conn.enveloped:
            await room.on_connect(handle, handle.request)
            return
        self._counted = handle if resumed else None
        position, asked, span, state = self._position(conn)
        start = len(outbox)
        if not resumed:
            await room.on_connect(handle, handle.request)
            self._counted = handle  # whatever fails from here, the room hears it leave
        sent = len(outbox)
        recovered = await self._welcome(conn, resumed, position, (asked, span), state)
        outbox[start:] = outbox[sent:] + outbox[start:sent]  # the welcome first
        if recovered is False:
            self._resuming = handle if resumed else None
            try:
                await room.on_resync(handle)
            except Reject as refused:
                handle.close(CloseCode.POLICY_VIOLATION, refused.reason)
            finally:
                self._resuming = None

    def _position(
        self, conn: Transport
    ) -> tuple[tuple[str, int] | None, bool, tuple[int, int] | None, list[bytes]]:
        """Where the room's log is, whether ``conn`` asked to recover, the span to
        replay it (None: it cannot be), and the presence it is welcomed with: its
        frames, each under ``max_message_size`` (docs/presence.md, "The wire")."""
        log = self._hooks.log
        position = None
        if log is not None:
            made = log.begin()  # a client that sees no event yet still learns the epoch
            if made:
                self._hooks.current_changes().writes.update(made)
            position = log.position
        asked = conn.resume
        span = None
        if asked.epoch is not None and asked.seq is not None and log is not None:
            oldest = log.oldest(self.wall_time())
            span = decide(position, oldest, log.history.max_replay, (asked.epoch, asked.seq))
        # who is here (a room that never tracked: nobody)
        tracker, limit = self._presence, self.room_class.max_message_size
        state = [] if tracker is None else state_frames(tracker, limit)
        return position, asked.epoch is not None and asked.seq is not None, span, state

    async def _welcome(
        self,
        conn: Transport,
        resumed: bool,
        position: tuple[str, int] | None,
        recovery: tuple[bool, tuple[int, int] | None],
        state: list[bytes],
    ) -> bool | None:
        """Send ``conn`` its welcome, then what it missed (``recovery``: whether it asked,
        and the span to replay); what ``recovered`` says."""
        asked, span = recovery
        recovered: bool | None = None
        replay: list[bytes] = []
        if asked:
            replayed = None if span is None else await self._replayed(conn, *span)
            recovered = replayed is not None
            replay = replayed or []
        sessions = self._sessions
        if sessions is None:
            self._sessions = sessions = {}
        old = conn.session or conn.resume.session  # its session's name goes on
        if conn.session is not None:
            sessions.pop(conn.session, None)
        conn.session = token = envelope.new_token(old)
        sessions[token] = conn
        alone = (conn,)
        frame = envelope.welcome(
            conn.handle.id, token, position, resumed=resumed, recovered=recovered
        )
        self.emit(frame, alone)
        for frame in replay + state:
            self.emit(frame, alone)
        return recovered

    async def _replayed(self, conn: Transport, after: int, head: int) -> list[bytes] | None:
        """The frames of the broadcasts ``(after, head]`` meant for ``conn``; None if the
        log lacks one of them (never a partial replay: one trimmed, aged out, or too
        big to have been kept), or if they add up to more than half of
        ``max_send_queue``: the 1008 such a replay would be cut with would only bring
        the client back to ask for it again."""
        log = self._hooks.log
        assert log is not None, "a span to replay comes from the room's log"
        keys = [log_key(seq) for seq in range(after + 1, head + 1)]
        found = await read_reserved(self, keys)
        if len(found) != len(keys):
            return None
        frames = []
        budget = self.room_class.max_send_queue // 2
        now, conn_id, tags = self.wall_time(), conn.handle.id, conn.tags
        token = conn.session or conn.resume.session
        session = None if token is None else envelope.session_name(token)
        for seq, key in enumerate(keys, after + 1):
            value = found[key]
            if not log.fresh(value["t"], now):
                return None
            if meets(value, conn_id, session, tags):
                payload = payload_of(value)
                if payload is None:  # too big to have been kept
                    return None
                frame = envelope.encode(payload, seq)
                budget -= len(frame)
                if budget < 0:
                    return None
                frames.append(frame)
        return frames

    async def _load_log(self, history: History) -> ReplayLog:
        """The room's log as the store has it (the room starts, or wakes): its meta
        alone, but once for a log of the first format, whose entries' times it reads."""
        found = await self.store.get_many(self.room, [META_KEY])
        meta = json.loads(found[META_KEY]) if META_KEY in found else None
        if meta is not None and "v" not in meta:
            rows = await self.store.list(
                self.room, KeyRange(LOG_PREFIX, LOG_END), reverse=False, limit=None
            )
            times = [(seq_of(key), json.loads(text)["t"]) for key, text in rows]
            meta = upgrade(history, meta, times)
        return ReplayLog(history, meta)

    def _event_failed(self, event: Event) -> None:
        """roomkit's own code failed handling ``event`` (a bug): log it, count it, and
        end what the event was about (its connection), and nothing else.

        A handshake still waiting is refused with 500 (and one the room had counted in,
        a resumed session or a fresh one whose on_connect returned, ends as a failed
        turn's does: its presence leaves, and ``on_close`` runs with 1011 "Internal
        error"), a message's connection is closed with 1011, a cut or a drain closes
        its connections at once with its own frame, and an alarm's waiter is told it
        ran; the room goes on with its next event. Called from an ``except`` block,
        whose exception is logged.
        """
        about = event.conn if isinstance(event, (Connect, Message, Closed, Cut)) else None
        fields = self.log_fields() if about is None else about.log_fields()
        logger.exception(
            "room %s: handling %s failed", self.room, type(event).__name__, extra=fields
        )
        self.metrics.internal_errors += 1
        if isinstance(event, Connect) and not event.decided.is_set():
            counted, self._counted = self._counted is event.conn.handle, None
            self._refuse(event, INTERNAL_ERROR)
            event.conn.reject()
            self._forget(event.conn)
            event.decided.set()
            if counted:
                self._post_soon(Expire(event.conn, refused=_TURN_FAILED))
        elif isinstance(event, Message):
            event.conn.cut("internal_error", CloseCode.INTERNAL_ERROR, "Internal error")
        elif isinstance(event, Closed):
            self._forget(event.conn)
        elif isinstance(event, Cut):
            event.conn.push(event.frame)  # the close it was for, without waiting
        elif isinstance(event, Drain):
            if self._core.state is RoomState.CLOSING:
                self._core.change(Change.DRAIN)
            self.close_now(event.frame)
        elif isinstance(event, Alarm) and event.done is not None:
            event.done.set()

    def _refuse(self, event: Connect, refusal: Refusal) -> None:
        event.rejection = (refusal.status, refusal.text)
        self._host.metrics.refuse(refusal.reason)

    async def _handle_alarm(self, event: Alarm) -> None:
        if await self._room() is None:
            return
        # The alarm is deleted before the handler runs, in the handler's transaction:
        # if on_alarm sets a new one, that one stands.
        changes = Changes(alarm=AlarmWrite(None))
        self.metrics.alarms_run += 1
        hooks = self._hooks
        error = await hooks.transaction("on_alarm", AlarmInfo(event.retry), changes=changes)
        if error is None:
            return
        await hooks.report(None, error)
        alarm = after_failure(event.retry, self._host.wall_time(), self._host.jitter())
        if alarm.due is None:
            logger.error(
                "room %s: on_alarm failed %d times; alarm dropped",
                self.room,
                event.retry + 1,
                extra=self.log_fields(),
            )
        else:
            self.metrics.alarms_retried += 1
        hooks.finish(Changes(alarm=alarm), [])

    async def _handle_request(self, event: HttpRequest) -> None:
        """Answer a plain request with on_request's response, or with why it cannot run.

        Whatever ends the handling early (a failure of roomkit's own, the room's
        cancellation) answers it first, so that its client never waits on a turn
        that will not come.
        """
        try:
            if self._core.state in (RoomState.CLOSING, _DRAINING):
                event.answer(_REQUEST_SHUT_OUT)
            elif await self._room() is None:
                event.answer(_REQUEST_MOVED if self._hooks.fenced else _REQUEST_FAILED)
            else:
                await self._on_request(event)
                self._settle_later(event)
        except Exception:
            event.answer(_REQUEST_FAILED)
            raise
        except BaseException:
            event.answer(_REQUEST_REFUSED)
            raise

    async def _on_request(self, event: HttpRequest) -> None:
        """Run ``on_request`` as a transaction; its response goes out once durable."""
        hooks = self._hooks
        responses: list[Response] = []

        async def respond() -> None:
            room = hooks.instance
            assert room is not None, "the turn runs on the room's instance"
            response = await room.on_request(event.request)
            if not isinstance(response, Response):
                raise TypeError(
                    f"{self.room_class.__name__}.on_request returned "
                    f"{type(response).__name__}, not a roomkit.Response"
                )
            responses.append(response)

        settle = functools.partial(self._request_settled, event, responses)
        error = await hooks.transaction("on_request", call=respond, settle=settle)
        if error is not None:
            event.answer(_REQUEST_FAILED)
            await hooks.report(None, error)

    def _request_settled(
        self, event: HttpRequest, responses: list[Response], durable: bool
    ) -> None:
        """Answer once on_request's writes are durable; if they never will be, 503 when
        the room was fenced meanwhile (it lives elsewhere now), else 500."""
        if durable:
            event.answer(responses[0])
        else:
            event.answer(_REQUEST_MOVED if self._hooks.fenced else _REQUEST_FAILED)

    def _settle_later(self, event: Call | HttpRequest) -> None:
        """Remember ``event`` until its answer comes, if its commit is still in flight."""
        left = tuple(each for each in self._settling if not each.answered.is_set())
        self._settling = (*left, event) if not event.answered.is_set() else left

    def _refuse_queued(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        """The room is gone with events still queued: the plain requests among them
        get 503, and the calls a refusal, not a wait for ever."""
        with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
            while True:
                event = receive.receive_nowait()
                if isinstance(event, HttpRequest):
                    event.answer(_REQUEST_REFUSED)
                elif isinstance(event, Call):
                    event.answer_with(_refused("the room was cancelled"))

    # Calls.

    @property
    def rooms(self) -> Rooms:
        """The server's rooms, for calls from this room's turns: each carries the
        running turn's chain (that of the call it serves, and this room)."""
        return Rooms(self._calls, self._turn_chain)

    def _turn_chain(self) -> Chain:
        """The chain of a call made now: the running turn's, if made from it; none
        from a task of the room's own (no turn waits on it)."""
        if trio.lowlevel.current_task() is not self._hooks.task or self._hooks.outbox is None:
            return ()
        return (self.room,) if self._chain is None else self._chain

    async def _handle_call(self, event: Call) -> None:
        """Run the call ``event`` as one turn: its answer is set once the turn's writes
        are durable; a raise rolls the turn back (``on_error`` does not run: the caller
        hears of it).

        Whatever ends the handling early (a failure of roomkit's own, the room's
        cancellation) answers it first, so that its caller never waits on a turn that
        will not come.
        """
        try:
            await self._run_call(event)
            self._settle_later(event)
        except Exception:
            why = "roomkit failed handling the call (see the server's log)"
            event.answer_with(encode_error("error", "RoomkitError", why, _ran(event)))
            raise
        except BaseException:
            why = "the room was cancelled during the call"
            event.answer_with(encode_error("error", "RoomCallError", why, _ran(event)))
            raise

    async def _run_call(self, event: Call) -> None:
        """Decode the call's arguments, then run its method as a transaction.

        The turn's chain holds from the start, so that the calls of an ``on_start``
        that this call runs carry it too (a cycle through a starting room is caught);
        and the call is checked again once the room has started, since its deadline
        may have passed meanwhile: a call the caller gave up on never runs.
        """
        codec = event.codec
        refusal = self._call_refusal(event)
        if refusal is None:
            try:
                args, kwargs, chain = codec.decode_arguments(
                    event.body, self.room_class.max_request_size
                )
            except (TypeError, ValueError) as exc:
                refusal = encode_error("error", type(exc).__name__, str(exc), False)
        if refusal is not None:
            event.answer_with(refusal)
            return
        answer: list[bytes] = []

        async def run() -> None:
            result = await getattr(self._hooks.instance, codec.name)(*args, **kwargs)
            limit = self.room_class.max_request_size
            answer.append(codec.encode_result(result, limit))  # fails the turn if it cannot be

        self._chain = (*chain, self.room)
        try:
            if await self._room() is None:
                moved = self._hooks.fenced
                why = "moved to another process" if moved else "failed to start (see the log)"
                refusal = _refused(f"the room {why}")
            else:
                refusal = self._call_refusal(event)  # no await from here to started
            if refusal is not None:
                event.answer_with(refusal)
                return
            event.started = True
            settle = functools.partial(self._call_settled, event, answer)
            error = await self._hooks.transaction("rpc", call=run, settle=settle)
        finally:
            self._chain = None
        if error is not None:
            event.answer_with(_raised(error))

    def _call_refusal(self, event: Call) -> bytes | None:
        """Why ``event`` is not run, as its answer; None to run it."""
        if event.abandoned or trio.current_time() >= event.deadline:
            why = "dropped unrun: still queued at its deadline"
            return encode_error("timeout", "RoomCallTimeout", why, False)
        if self._core.state is not RoomState.AWAKE:
            return _refused("the room is shutting down")
        if self._hooks.fenced:
            return _refused("the room moved to another process")
        return None

    def _call_settled(self, event: Call, answer: list[bytes], durable: bool) -> None:
        """Answer ``event`` once its turn's writes are durable, or failed to be."""
        if durable:
            event.answer_with(answer[0])
        elif self._hooks.fenced:
            why = "the room moved to another process: its writes were refused"
            event.answer_with(encode_error("error", "FencedError", why, False))
        else:
            why = "the room's storage failed: its writes may not have landed"
            event.answer_with(encode_error("error", "StorageError", why, None))

    async def _room(self) -> Room | None:
        """The room's instance, created (and started) on its first event; the room is
        claimed in the store first. None if that fails, or once the room is fenced."""
        hooks = self._hooks
        if hooks.instance is not None:
            return hooks.instance
        if hooks.fenced:
            return None  # another process owns the room now
        if hooks.claim is None:
            try:
                claim = await self._host.claim(self.room)
            except Exception:
                logger.exception(
                    "room %s: claiming the room in the store failed",
                    self.room,
                    extra=self.log_fields(),
                )
                return None
            if claim is None:  # another member's: clients go there (503 to handshakes)
                hooks.fenced = True
                return None
            if hooks.fenced:  # this process's lease ran out while the claim was in flight
                return None
            hooks.claim = claim
        cls = self.room_class
        if cls.history is not None and hooks.log is None:
            try:
                hooks.log = await self._load_log(cls.history)
            except Exception:
                logger.exception(
                    "room %s: reading the room's log failed", self.room, extra=self.log_fields()
                )
                return None
        try:
            room = instantiate(cls, self, Storage(self))
        except Exception:
            logger.exception(
                "room %s: %s() raised", self.room, cls.__name__, extra=self.log_fields()
            )
            return None
        hooks.instance = room
        await hooks.run(None, "on_start")
        return hooks.instance  # None if the room was fenced or reset during on_start

    def _connect_settled(self, event: Connect, resumed: bool, durable: bool) -> None:
        """Answer the handshake once on_connect's changes are durable, or refuse it: 503
        if the room was fenced meanwhile (its new owner will take the client), else 500.

        A refused resume ends its session: the room, reset by the failure, still hears
        it leave (``on_close`` with 1011 "Storage failure", as the room's other
        connections are closed), unless it was fenced. A fresh connection's on_connect
        ran on the instance the failure dropped: the room never had it."""
        if event.decided.is_set():
            return  # already refused: roomkit failed handling the handshake after on_connect
        if not durable:
            self._refuse(event, ROOM_MOVED if self._hooks.fenced else HOOK_FAILED)
            event.conn.reject()
            self._forget(event.conn)
            if resumed:
                self._post_soon(Expire(event.conn, refused=_COMMIT_FAILED))
            else:
                self._poke()
        event.decided.set()

    def _poke(self) -> None:
        """Have the event loop check whether the room is empty, from outside an event."""
        # WouldBlock: events are queued, and they will do; Broken: the room is gone.
        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
            self._wake().send_nowait(Check())

    def _forget(self, conn: Transport, *, leaves: bool = True) -> None:
        """``conn`` is no longer the room's; unless another transport carries its
        session on (``leaves=False``), it leaves the room's presence too."""
        if leaves and self._presence is not None:
            self._presence.track(conn.handle.id, "", None, turn=False)
        if self._core.leave(conn, conn.tags):
            self._host.connections -= 1
            conn.tags = ()  # what on_close sees, as docs/api.md says
            if conn.enveloped:
                self._enveloped -= 1
                sessions = self._sessions
                token = conn.session
                if sessions is not None and token is not None and sessions.get(token) is conn:
                    del sessions[token]

    def unhandled(self, error: Exception) -> None:
        self._host.unhandled(error)

    def log_fields(self, conn: Connection | None = None) -> dict[str, Any]:
        """What log lines about the room, or ``conn`` in it, carry as fields (``extra=``)."""
        return {"room": str(self.room)} if conn is None else connection_fields(self.room, conn)

    def set_timer(self, key: TimerKey, deadline: float) -> None:
        self._host.set_timer(key, deadline)

    def cancel_timer(self, key: TimerKey) -> None:
        self._host.cancel_timer(key)

    # For roomkit.testing.

    async def hibernate_now(self) -> None:
        """Hibernate as soon as the events already queued are handled and this room's
        commits are durable, however recent its last event; return once it has (or has
        ended, if it has no connection left). A room asleep, or shutting down, is left
        as it is."""
        if self._core.state is not RoomState.AWAKE:
            return
        if self._hibernated is None:
            self._hibernated = trio.Event()
        hibernated = self._hibernated
        self._poke()  # a loop waiting for its next event looks again, and finds it must stop
        await hibernated.wait()


def _refused(why: str) -> bytes:
    """The answer to a call the room did not run."""
    return encode_error("error", "RoomCallError", why, False)


def _ran(event: Call) -> bool | None:
    """What a call's caller knows of its effect when its handling ended early."""
    return None if event.started else False


def _raised(error: Exception) -> bytes:
    """The answer to a call whose method raised ``error`` (its turn rolled back)."""
    kind: Kind = (
        "cycle"
        if isinstance(error, RoomCallCycle)
        else "timeout"
        if isinstance(error, RoomCallTimeout)
        else "error"
    )
    return encode_error(kind, type(error).__name__, str(error), False)


def _cancellable(_: Callable[[], None]) -> trio.lowlevel.Abort:
    """A room's task may be cancelled while it waits for the room's end."""
    return trio.lowlevel.Abort.SUCCEEDED
