"""The room actor: one task per live room, handling its events one at a time.

A :class:`RoomActor` owns a room's scope in the nursery tree: its nursery holds the
actor's event loop and every connection task of the room, so cancelling the room
cancels exactly those. Connection tasks never call hooks themselves; they put events
(connect, message, closed) on the actor's bounded channel, and the actor runs the
matching hook to completion before taking the next, in arrival order.

Output gate: while a hook runs, what it sends (``send``, ``broadcast``, ``close``) is
collected instead of queued; when the hook returns the collection is released to the
connections in order, and when it raises it is dropped. Sends from other tasks (a
room's own background task, the reader answering bad input) bypass the gate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import attrs
import trio
from wsproto.events import CloseConnection

from ._closecodes import CloseCode
from ._connection import Connection, ConnectionState
from ._errors import Reject
from ._frames import encode_message
from ._room import Room
from ._roomid import RoomId
from ._tags import TagIndex

__all__ = ["RoomActor"]

logger = logging.getLogger("roomkit")

#: Events a room may have waiting before the connections feeding it wait too: a slow
#: room slows its own readers (TCP backpressure) instead of growing memory.
EVENT_QUEUE: Final = 256

_Outbox = list[tuple[bytes | CloseConnection, Iterable[Connection]]]


@attrs.define(eq=False)
class _Connect:
    conn: Connection
    decided: trio.Event = attrs.Factory(trio.Event)
    rejection: tuple[int, str] | None = None


@attrs.frozen(eq=False)
class _Message:
    conn: Connection
    message: Any


@attrs.frozen(eq=False)
class _Closed:
    conn: Connection


_Event = _Connect | _Message | _Closed
_Hook = Callable[..., Awaitable[None]]


class RoomActor:
    """The live room named ``name``: its connections, tags, instance and event loop.

    Args:
      room_class: the Room subclass to instantiate.
      room: the room's identity.
      on_empty: called (synchronously) when the room has no connection and no event
        left; the actor's :meth:`run` then returns.
    """

    def __init__(
        self, room_class: type[Room], room: RoomId, on_empty: Callable[[RoomActor], None]
    ) -> None:
        self.room_class: Final = room_class
        self.room: Final = room
        self.name: Final = room.name
        self.tags: Final = TagIndex[Connection]()
        self._on_empty = on_empty
        self._connections: dict[Connection, None] = {}
        self._send, self._receive = trio.open_memory_channel[_Event](EVENT_QUEUE)
        self._instance: Room | None = None
        self._outbox: _Outbox | None = None
        self._task: trio.lowlevel.Task | None = None
        self._nursery: trio.Nursery | None = None
        self._backlog: list[Connection] = []
        self._closing = False

    # Entry points for the server and the connections.

    def admit(self, conn: Connection) -> None:
        """Take ownership of a new connection and start its task in the room's nursery."""
        self._connections[conn] = None
        if self._nursery is None:
            self._backlog.append(conn)
        else:
            self._nursery.start_soon(conn.run)

    def shutdown(self) -> None:
        """Close every connection with 1001 and refuse new ones with 503."""
        self._closing = True
        for conn in list(self._connections):
            conn.push(CloseConnection(CloseCode.GOING_AWAY, "Going away"))

    async def connect(self, conn: Connection) -> tuple[int, str] | None:
        """Run ``on_connect``; return None to accept, or the ``(status, reason)`` to refuse."""
        event = _Connect(conn)
        await self._send.send(event)
        await event.decided.wait()
        return event.rejection

    async def message(self, conn: Connection, message: Any) -> None:
        await self._send.send(_Message(conn, message))

    async def closed(self, conn: Connection) -> None:
        """Report that ``conn`` has closed; ``on_close`` will run."""
        # Broken or closed: the room itself was cancelled, and nobody is left to tell.
        gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
        with trio.CancelScope(shield=True), gone:
            await self._send.send(_Closed(conn))

    async def run(self) -> None:
        """The room's scope: its connections' tasks and its event loop."""
        self._task = trio.lowlevel.current_task()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for conn in self._backlog:
                nursery.start_soon(conn.run)
            self._backlog.clear()
            async with self._receive:
                async for event in self._receive:
                    await self._handle(event)
                    if not self._connections and not self._receive.statistics().current_buffer_used:
                        self._on_empty(self)
                        return

    # What the Room's methods and the Connection's send/close call.

    def connections(self, tag: str | None = None) -> list[Connection]:
        members = self._connections if tag is None else self.tags.members(tag)
        return [c for c in members if c.state in (ConnectionState.OPEN, ConnectionState.CONNECTING)]

    def encode(self, message: Any) -> bytes:
        """The frame for ``message``, encoded by the room's protocol when it is typed."""
        if isinstance(message, str | bytes):
            return encode_message(message)
        protocol = self.room_class.protocol
        if protocol is None:
            raise TypeError(
                f"a room without a protocol sends str or bytes, not "
                f"{type(message).__name__}; set {self.room_class.__name__}.protocol"
            )
        return encode_message(protocol.server.encode(message))

    def broadcast(
        self, message: Any, tag: str | None, exclude: Connection | Iterable[Connection] | None
    ) -> int:
        frame = self.encode(message)
        recipients = self.connections(tag)
        if exclude is not None:
            left_out = {exclude} if isinstance(exclude, Connection) else set(exclude)
            recipients = [c for c in recipients if c not in left_out]
        self.emit(frame, recipients)
        return len(recipients)

    def emit(self, item: bytes | CloseConnection, recipients: Iterable[Connection]) -> None:
        """Queue ``item`` for ``recipients``, through the output gate when a hook is running."""
        if self._outbox is not None and trio.lowlevel.current_task() is self._task:
            self._outbox.append((item, recipients))
            return
        for conn in recipients:
            conn.push(item)

    # The event loop.

    async def _handle(self, event: _Event) -> None:
        if isinstance(event, _Connect):
            await self._handle_connect(event)
            event.decided.set()
        elif isinstance(event, _Message):
            room = await self._room()
            if room is not None and event.conn.state is ConnectionState.OPEN:
                await self._run(event.conn, room.on_message, event.conn, event.message)
        else:
            conn = event.conn
            del self._connections[conn]
            self.tags.discard(conn)
            room = await self._room()
            if room is not None:
                await self._run(
                    conn, room.on_close, conn, conn.close_code, conn.close_reason, conn.was_clean
                )

    async def _handle_connect(self, event: _Connect) -> None:
        conn = event.conn
        room = None
        if self._closing:
            event.rejection = (503, "Server shutting down")
        elif len(self._connections) > self.room_class.max_connections:
            event.rejection = (503, "Room is full")
        elif (room := await self._room()) is None:
            event.rejection = (500, "Internal error")
        else:
            error = await self._hook(room.on_connect, conn, conn.request)
            if isinstance(error, Reject):
                event.rejection = (error.status, error.reason)
            elif error is not None:
                event.rejection = (500, "Internal error")
                await self._report(conn, error)
        if event.rejection is not None:
            del self._connections[conn]
            self.tags.discard(conn)
        elif conn.state is ConnectionState.CONNECTING:
            conn.state = ConnectionState.OPEN

    async def _room(self) -> Room | None:
        """The room's instance, created (and started) on its first event."""
        if self._instance is not None:
            return self._instance
        cls = self.room_class
        try:
            room = cls.__new__(cls)
            room._roomkit_actor = self
            cls.__init__(room)  # after binding, so name and connections work in __init__
        except Exception:
            logger.exception("room %r: %s() raised", self.name, cls.__name__)
            return None
        self._instance = room
        error = await self._hook(room.on_start)
        if error is not None:
            await self._report(None, error)
        return room

    async def _run(self, conn: Connection, hook: _Hook, *args: Any) -> None:
        error = await self._hook(hook, *args)
        if error is not None:
            await self._report(conn, error)

    async def _hook(self, hook: _Hook, *args: Any) -> Exception | None:
        """Run one hook behind the output gate; return what it raised, if anything."""
        outbox: _Outbox = []
        self._outbox = outbox
        try:
            await hook(*args)
        except Exception as exc:
            return exc
        finally:
            self._outbox = None
        for item, recipients in outbox:
            for conn in recipients:
                conn.push(item)
        return None

    async def _report(self, conn: Connection | None, error: Exception) -> None:
        assert self._instance is not None
        failure = await self._hook(self._instance.on_error, conn, error)
        if failure is not None:
            logger.error("room %r: on_error raised", self.name, exc_info=failure)
            if conn is not None:
                conn.push(CloseConnection(CloseCode.INTERNAL_ERROR, "Internal error"))
