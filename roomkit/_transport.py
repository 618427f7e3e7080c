"""A room's WebSocket connection on the wire: its reader loop and its writer task.

Theory of operation. A :class:`Transport` is one peer's socket in a room: what the room
holds and sends to (the hooks see its :class:`~roomkit._connection.Connection`
handle). It decides nothing itself: its :class:`~roomkit._core.peer.Peer`, pure, says
what the bytes read mean and what the peer is owed, and the transport carries it out.
Its task (:meth:`Transport.run`, in its room's nursery) is the reader; a writer task,
also in the room's nursery, starts only when a write would block while the reader
reads, and once reading is over the reader writes what is left itself:

* The reader feeds each chunk read to the peer machine, delivers the messages it
  returns to the room in order, and carries out the rest (note when the auto-response
  went out, kick the queue, tell the room to cut the peer off, schedule the next ping,
  stop).
* ``push`` (what ``send``, ``close`` and a room's ``broadcast`` come to) only appends
  to the send queue, then kicks it; it never blocks and never awaits.
* A kick writes the queue straight to the socket (one non-blocking ``os.write``) when
  the writer task is idle; whatever the socket does not take wakes the writer, which
  takes *everything* queued and writes it with one ``send_all``. So a burst of messages
  costs one system call, not one each, and usually no task switch at all. A peer's
  close is answered the same way: the reader, done reading, writes the answer itself,
  so that a connection that never blocked a write has no second task at all.

What the room and the output gate call, per recipient of a hook's sends:
``hold(size) -> bool`` counts bytes the gate keeps for it (False: it takes no more),
``unhold(size)`` gives them back, ``push(item, kick=False)`` queues a released frame,
and ``kick()`` then writes what was queued, once per recipient.

Closing: whoever closes first sends a close frame; the other side answers with one, and
the server then drops the TCP connection. A peer that does not answer our close frame
within ``CLOSE_TIMEOUT`` is dropped anyway, and its close counts as unclean (1006). A
peer that roomkit cuts off has ``CLOSE_TIMEOUT`` to take what is queued and the close
frame as well; a room's own close waits for a slow reader, as its sends do. When
roomkit's own code fails serving a connection (a bug), that connection alone ends,
with 1011 if a close frame can still go out whole.

Sessions (``roomkit.v1`` peers, docs/recovery.md). A transport is one socket; the
session it carries is its :class:`~roomkit._connection.Connection` handle. When the
socket of an enveloped peer ends abruptly (no close frame: 1006, or a ping timeout),
the transport parks (``AWAY``) instead of letting go of its handle, and its room keeps
it for ``session_grace``. A new transport that resumes the session takes the handle
over (:meth:`Transport.take_over`); the old one is then *superseded*: whatever it still
does (a late end of its socket) reaches neither the handle nor the room's hooks.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio
from wsproto.events import CloseConnection

from ._accept import close_now
from ._closecodes import CloseCode
from ._connection import Connection, detach, reattach
from ._connlog import connection_fields, log_closed, log_failed, log_opened, log_refused
from ._core.envelope import offers_envelope, split_query
from ._core.frontdoor import Response
from ._core.lifecycle import ConnectionState, Phase, Trigger
from ._core.limits import CLOSE_TIMEOUT
from ._core.peer import AUTO, CLOSE, CUT, END, PING, PONG, TIMEOUT, WRITE, Peer
from ._metrics import CutReason, RoomMetrics
from ._request import Request
from ._roomid import RoomId

if TYPE_CHECKING:
    from ._room import Room

__all__ = ["RoomSide", "Transport"]

#: Bytes asked of the socket per read: big enough for a burst of small messages.
RECEIVE_BYTES: Final = 64 * 1024

#: The states in which a connection takes sends (made before its handshake is
#: answered, they go out right after it).
_TAKES_SENDS: Final = (ConnectionState.CONNECTING, ConnectionState.OPEN)


class RoomSide(Protocol):
    """What a transport needs of its room (the actor)."""

    @property
    def room(self) -> RoomId: ...

    @property
    def room_class(self) -> type[Room]: ...

    @property
    def metrics(self) -> RoomMetrics: ...

    @property
    def auto_response(self) -> tuple[str | bytes, bytes] | None:
        """The room's auto-response: the request, and the answer already framed."""

    @property
    def auto_response_enveloped(self) -> tuple[str | bytes, bytes] | None:
        """The same, its answer framed in the roomkit.v1 envelope."""

    async def connect(self, conn: Transport) -> tuple[int, str] | None:
        """Run ``on_connect``; None to accept, or the ``(status, reason)`` to refuse."""

    async def message(self, conn: Transport, message: Any) -> None: ...

    async def cut(self, conn: Transport, frame: CloseConnection) -> None:
        """Close ``conn`` after the messages it has already delivered."""

    async def closed(self, conn: Transport) -> None: ...

    def emit(self, item: bytes | CloseConnection, recipients: Sequence[Transport]) -> None: ...

    def encode(self, message: Any) -> bytes: ...

    def encode_enveloped(self, message: Any) -> bytes:
        """``message``'s frame in the roomkit.v1 envelope, unlogged."""

    def expire(self, conn: Transport) -> None:
        """The grace of ``conn``'s parked session is over: it ends (``on_close``)."""

    def close_parked(self, conn: Transport, code: int, reason: str) -> None:
        """The room closes ``conn``'s parked session: it ends now (``on_close``)."""

    def close_behind(self, conns: Sequence[Transport], frame: CloseConnection) -> None: ...

    def retag(self, conn: Transport, old: tuple[str, ...], new: tuple[str, ...]) -> None: ...

    def track(self, conn: Transport, presence: str | None) -> None:
        """Track ``conn`` in the room's presence (its JSON value), or untrack it (None)."""

    def set_timer(self, key: tuple[str, Hashable], deadline: float) -> None: ...

    def cancel_timer(self, key: tuple[str, Hashable]) -> None: ...

    def wall_time(self) -> float:
        """Seconds since the epoch, on the clock of ``Room.time()``."""

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Start ``task`` (a connection's writer) in the room's nursery."""


class Transport:
    """One peer's WebSocket in a room: what the room sends to, and its two loops.

    Attributes:
      handle: the connection as its room's hooks see it.
      peer: the machine that decides what the peer's bytes mean and what it is owed.
      tags: the connection's tags, as the room's tag index has them.
      metrics: its Room class's counters.
      auto_response_timestamp: when the auto-response was last sent, on the room's wall
        clock (``Room.time()``); None before the first.
      enveloped: the peer asked for the roomkit.v1 envelope (and the 101 selected it).
      resume: what the peer's handshake asked to resume and recover.
      session: the session's resume token, once its welcome gave it one.
      superseded: another transport took the session over: this one serves it no more.
    """

    # Slots: a server holds thousands of these, each touched per message.
    __slots__ = (
        "_accept",
        "_actor",
        "_alone",
        "_close_tail",
        "_fd",
        "_scope",
        "_serving",
        "_stream",
        "_wakeup",
        "_writer",
        "_writer_done",
        "_writing",
        "auto_response_timestamp",
        "enveloped",
        "handle",
        "metrics",
        "peer",
        "resume",
        "session",
        "superseded",
        "tags",
    )

    def __init__(
        self,
        actor: RoomSide,
        stream: trio.abc.Stream,
        received: bytes,
        accept: bytes,
        request: Request,
    ) -> None:
        room = actor.room_class
        query, self.resume = split_query(request.query)  # roomkit's, never the room's
        if query is not request.query:
            request = attrs.evolve(request, query=query)
        self.enveloped: Final = offers_envelope(request.headers.get("sec-websocket-protocol"))
        self.peer: Final = Peer(
            received,
            trio.current_time(),
            max_message_size=room.max_message_size,
            max_send_queue=room.max_send_queue,
            rate_limit=room.rate_limit,
            auto_response=actor.auto_response_enveloped if self.enveloped else actor.auto_response,
            protocol=room.protocol,
            metrics=actor.metrics,
            enveloped=self.enveloped,
        )
        self.handle = Connection(self, request)
        self.session: str | None = None
        self.superseded = False
        self.tags: tuple[str, ...] = ()
        self.metrics: Final = actor.metrics
        self.auto_response_timestamp: float | None = None
        self._actor = actor
        # The recipients of a send to this connection alone (emptied once it is closed).
        self._alone: tuple[Transport, ...] = (self,)
        self._stream = stream
        self._accept: bytes | None = accept  # the 101 response, until it is sent
        #: The socket's file descriptor while it is open and past its handshake, for
        #: writes that need no task (see kick); None otherwise.
        self._fd: int | None = None
        #: The reader's scope while the connection is served: cancelled to drop the
        #: peer (which ends a writer task too), its deadline the close's (see _closing).
        self._scope = trio.CancelScope()
        #: From the 101 until the connection's task ends: a writer may write.
        self._serving = False
        #: Something writes what kick leaves: a writer task, or the reader once it is
        #: done reading (see _write_later, _serve). Never false again once true.
        self._writing = False
        #: The writer task's scope while it runs, and its end; None without one.
        self._writer: trio.CancelScope | None = None
        self._writer_done: trio.Event | None = None
        self._wakeup: trio.Event | None = None  # the writer's, while it waits
        #: The close frame went out in part: its tail is queued as a frame, and the
        #: close counts as out (its deadline, see _close_out) once the queue is.
        self._close_tail = False

    def __repr__(self) -> str:
        return f"<Transport {self.handle.id} room={self.handle.request.room!r} {self.state.value}>"

    # The handle's Link protocol.

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life, as rooms see it."""
        return self.peer.state

    @property
    def last_seen(self) -> float:
        """When the peer last completed a message, in Trio's clock."""
        return self.peer.last_seen

    def retag(self, tags: tuple[str, ...]) -> None:
        self._actor.retag(self, self.tags, tags)
        self.tags = tags

    def send(self, message: Any) -> None:
        actor = self._actor
        if self.enveloped:
            actor.emit(actor.encode_enveloped(message), self._alone)
        else:
            actor.emit(actor.encode(message), self._alone)

    def close(self, code: int, reason: str) -> None:
        if self.peer.phase is Phase.AWAY:  # no socket to close: a kick ends the session
            self._actor.close_parked(self, code, reason)
        else:
            self._actor.emit(CloseConnection(code, reason), self._alone)

    def track(self, presence: str | None) -> None:
        self._actor.track(self, presence)

    # The room's side: called by the actor, the output gate and the server.

    def open(self) -> None:
        """The room admits the connection: its ``on_connect`` starts."""
        self.peer.move(Trigger.ADMIT)

    def reject(self) -> None:
        """The room refuses the handshake (or failed to decide it): it ends here."""
        self.peer.move(Trigger.REJECT)

    # Sessions.

    def take_over(self, old: Transport) -> None:
        """Carry ``old``'s session on (a resume): its handle, so the same Connection (id,
        attachment, what the application set on it); the room moves its tags over.
        ``old`` serves it no more: a live one (its socket not known dead yet) is
        dropped at once."""
        old.superseded = True
        old._alone = ()
        if old.peer.phase is Phase.AWAY:
            old.peer.move(Trigger.GONE)
        else:
            old._scope.cancel()  # its late end is a superseded one's: ignored
        self.handle = old.handle
        reattach(self.handle, self)

    def grace_over(self) -> None:
        """The scheduler's: the parked session's grace has run out."""
        self._actor.expire(self)

    def end_parked(self) -> None:
        """The parked session ends (its grace is over, or the room closes)."""
        self.peer.move(Trigger.GONE)
        self._alone = ()
        detach(self.handle)

    def drain(self) -> None:
        """The server is shutting down: deliver nothing more that the peer sends."""
        self.peer.move(Trigger.DEAFEN)

    def push(self, item: bytes | CloseConnection, *, kick: bool = True) -> None:
        """Queue an encoded frame, or ask for a close; dropped once the connection is closing.

        A frame that would take the bytes owed to this peer past ``max_send_queue``
        cuts the connection off as a slow consumer instead. With ``kick=False`` the
        caller kicks once after queueing several frames, so they go out in one write.
        """
        peer = self.peer
        if peer.state not in _TAKES_SENDS:
            return
        if isinstance(item, CloseConnection):
            peer.owe_close(item)
            self._closing()
        elif peer.queue.push(item):
            self.metrics.messages_sent += 1
            if kick:
                self.kick()
        else:
            peer.slow_consumer()
            self._closing()

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes that the output gate holds for this connection.

        Returns False (and cuts the connection off, if that is why) when the connection
        takes no more: the gate then keeps nothing for it.
        """
        peer = self.peer
        if peer.state is not ConnectionState.OPEN:
            return False
        if peer.queue.hold(size):
            return True
        peer.slow_consumer()
        self._closing()
        return False

    def unhold(self, size: int) -> None:
        """Give back ``size`` bytes the output gate held for this connection."""
        self.peer.queue.unhold(size)

    def cut(self, reason: CutReason, code: int, text: str) -> None:
        """Close the connection on roomkit's own account (not the room's) for ``reason``,
        behind what the room has already sent it (released, or held at the output gate)."""
        if self.peer.state in _TAKES_SENDS:
            self.peer.note_cut(reason)
            self._actor.close_behind(self._alone, CloseConnection(code, text))

    def _closing(self) -> None:
        """A close is owed to the peer: wake the writer, and if roomkit is cutting the
        peer off, give the whole close ``CLOSE_TIMEOUT`` (a peer that stopped reading,
        a flooder say, is dropped then instead of holding its connection for ever)."""
        if self.peer.cut_reason is not None:
            deadline = trio.current_time() + CLOSE_TIMEOUT
            self._scope.deadline = min(self._scope.deadline, deadline)
        self.kick()

    def kick(self) -> None:
        """Get what is queued moving.

        When the writer is idle, the queue is written straight to the socket, which does
        not block: usually the kernel takes it all, and no task had to wake for it (two
        trips through Trio's scheduler saved per write). The close owed, once the
        frames before it are out, goes the same way. Whatever the socket does not take
        is left to the writer task, started then if it was not yet: most connections
        never need one.
        """
        queue, fd = self.peer.queue, self._fd
        frames = queue.frames
        if fd is not None and not queue.writing:
            if frames:
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                sent = self._write_some(fd, data)
                if sent:
                    queue.sent(data, sent)
                    if self._close_tail:
                        self._frames_out()
            if not queue.frames and queue.close is not None:
                self._close_straight(fd, queue.close)
        if queue.frames or queue.close is not None:
            self._write_later()

    def _write_some(self, fd: int, data: bytes) -> int:
        """Write ``data`` to the socket without blocking, counted; the bytes it took."""
        sent = _write_now(fd, data)
        self.metrics.bytes_sent += sent
        return sent

    def _close_straight(self, fd: int, frame: CloseConnection) -> None:
        """Write the close owed straight to the socket: it is owed no longer. In the
        rare case that the socket does not take it whole, the rest is queued as a frame,
        for the writer. A writer waiting for work then finds that its work is done."""
        queue = self.peer.queue
        queue.close = None
        data = self.peer.close_frame(frame)
        if data is not None:
            queue.sent(data, self._write_some(fd, data))  # what it did not take heads it
            self._close_tail = True
            self._frames_out()
        if self._wakeup is not None:
            self._wakeup.set()

    def _write_later(self) -> None:
        """Leave what is owed to the writer task: wake it, or start it.

        The writer task starts in the room's nursery, beside the reader: not before the
        connection is served (its 101 is not out yet: serving begins with a kick), nor
        once it is over.
        """
        if self._writing:
            if self._wakeup is not None:
                self._wakeup.set()
        elif self._serving:
            self._writing = True
            self._writer_done = trio.Event()
            self._actor.spawn(self._write_task)

    def heartbeat(self) -> None:
        """Called by the server's scheduler: ping the peer, or drop it if it never answered.

        A peer that does not answer within ``ping_timeout`` is gone (or hopelessly
        stuck): its TCP connection is dropped at once, without a closing handshake it
        would never finish, and ``on_close`` gets 1006.
        """
        todo = self.peer.heartbeat()
        if todo & PING:
            self.kick()
            self._expect_pong(True)
        elif todo & TIMEOUT:
            self._scope.cancel()
        elif todo & CLOSE:
            self._closing()

    def log_fields(self) -> dict[str, Any]:
        """What log lines about this connection carry as fields (``extra=``)."""
        return connection_fields(self._actor.room, self.handle)

    # The connection's task.

    async def run(self) -> None:
        """Finish the handshake as the room decides, then serve the connection until closed.

        Owns the stream: it is closed when this returns, however it returns.
        """
        opened = False
        try:
            rejection = await self._actor.connect(self)
            if rejection is not None:
                log_refused(self.log_fields, *rejection)
                await self._stream.send_all(Response(*rejection).to_bytes())
                return
            opened = True
            fd = None
            if isinstance(self._stream, trio.SocketStream) and os.name == "posix":
                fd = self._stream.socket.fileno()
            await self._send_accept(fd)
            self.metrics.connections_opened += 1
            log_opened(self.log_fields)
            self._fd = fd
            self._expect_pong(False)
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer left during the handshake
        except Exception:
            await self._failed(opened)
        finally:
            self._serving = False  # no writer starts now, and one that runs is cancelled
            if self._writer is not None:
                self._writer.cancel()
            self._fd = None  # before the close: the number may be reused at once
            self.peer.move(Trigger.GONE)
            self._actor.cancel_timer(("ping", self))
            await close_now(self._stream)
            if opened:
                log_closed(self.log_fields, *self.peer.report, self.peer.cut_reason)
                if self._parks():
                    self.peer.move(Trigger.PARK)
                await self._actor.closed(self)
            # Break the cycles through this transport (its one-recipient tuple, its
            # handle), so that reference counting frees a closed connection: left to the
            # garbage collector, each handshake paid for a collection. Not a parked
            # session's (end_parked does it), nor a superseded one's: its handle is
            # another transport's now.
            if not (self.superseded or self.peer.phase is Phase.AWAY):
                self._alone = ()
                detach(self.handle)

    def _parks(self) -> bool:
        """Whether the session outlives this socket: a roomkit.v1 peer's that ended
        abruptly (1006: no close frame; a ping timeout), in a room with a grace. A
        clean close, or a cut of roomkit's (a slow consumer, a flood), ends it."""
        return (
            self.enveloped
            and not self.superseded
            and self._actor.room_class.session_grace is not None
            and self.peer.report[0] == CloseCode.ABNORMAL_CLOSURE
            and self.peer.cut_reason in (None, "ping_timeout")
        )

    async def _failed(self, opened: bool) -> None:
        """roomkit's own code failed serving this connection (a bug): that ends this
        connection only, with 1011 if it is open, else without an answer.

        Called from an ``except`` block, whose exception is logged.
        """
        self._note_failure()
        self._serving = False  # no writer starts now, and one that waits for work ends:
        if self._writer is not None:  # the 1011 below is the last thing written
            self._writer.cancel()
        queue = self.peer.queue
        # Not if a write was cut short, or a frame's tail waits: mid-frame, a close
        # frame would corrupt the stream.
        if not opened or queue.writing or queue.frames:
            return
        data = self.peer.close_frame(CloseConnection(CloseCode.INTERNAL_ERROR, "Internal error"))
        if data is not None:
            gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
            with trio.move_on_after(CLOSE_TIMEOUT), gone:
                await self._stream.send_all(data)

    def _note_failure(self) -> None:
        """Log (from an ``except`` block) and count a failure of roomkit's own code."""
        log_failed(self.log_fields)
        self.metrics.internal_errors += 1
        self.peer.note_cut("internal_error")

    def _expect_pong(self, waiting: bool) -> None:
        """Schedule the next ping, or (``waiting``) the deadline for the pong just asked for."""
        room = self._actor.room_class
        if room.ping_interval is None:
            return
        wait = room.ping_timeout if waiting else room.ping_interval
        self._actor.set_timer(("ping", self), trio.current_time() + wait)

    async def _send_accept(self, fd: int | None) -> None:
        """Send the 101: straight to the socket ``fd`` (when there is one), which nearly
        always takes it whole, else (the rest) through the stream."""
        accept, self._accept = self._accept, None
        assert accept is not None
        if fd is not None:
            accept = accept[_write_now(fd, accept) :]
        if accept:
            await self._stream.send_all(accept)

    async def _serve(self) -> None:
        """Read until the connection is over, then, when the peer is still there, give
        what is owed to it (our close reply, or a cut's close, which the room queues
        yet) ``CLOSE_TIMEOUT`` to go out: written by this task, or by the writer task
        if one started while reading."""
        with self._scope:
            self._serving = True
            self.kick()  # what on_connect sent
            await self._read_loop()
            if self.peer.report[0] == CloseCode.ABNORMAL_CLOSURE:
                return  # the peer is gone: nothing more to write
            if self._writing:
                assert self._writer_done is not None  # made with the writer task
                self._give_close_time()
                await self._writer_done.wait()
            elif self.peer.queue.frames or not self.peer.close_sent:
                self._writing = True
                self._give_close_time()
                await self._write_loop()

    def _give_close_time(self) -> None:
        """What is left to write has ``CLOSE_TIMEOUT`` at most (or less: a cut's)."""
        deadline = trio.current_time() + CLOSE_TIMEOUT
        self._scope.deadline = min(self._scope.deadline, deadline)

    async def _write_task(self) -> None:
        """The writer task: the write loop in a scope of its own, which the reader
        cancels when the connection ends (a room's nursery does not end with it)."""
        assert self._writer_done is not None  # made when this was started
        try:
            with trio.CancelScope() as self._writer:
                if self._serving:  # not if the connection ended before this ran
                    await self._write_loop()
        except Exception:  # a bug of roomkit's: it ends this connection, not its room
            self._note_failure()
            self._scope.cancel()
        finally:
            self._writer = None
            self._writer_done.set()

    async def _write_loop(self) -> None:
        """Write what kick left: all that is queued in one ``send_all``, then the close."""
        queue = self.peer.queue
        try:
            while True:
                if not queue.frames and queue.close is None:
                    if self.peer.close_sent:
                        return  # the close went out straight (see kick): nothing is left
                    self._wakeup = wakeup = trio.Event()
                    await wakeup.wait()
                if queue.frames:
                    data = queue.take()
                    await self._stream.send_all(data)
                    self.metrics.bytes_sent += len(data)
                    queue.written()
                    if self._close_tail:
                        self._frames_out()
                elif queue.close is not None:
                    await self._write_close(queue.close)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._scope.cancel()  # the peer is gone: nothing more will be read
        finally:
            self._wakeup = None

    async def _write_close(self, frame: CloseConnection) -> None:
        data = self.peer.close_frame(frame)
        if data is not None:
            await self._stream.send_all(data)
            self.metrics.bytes_sent += len(data)
        self._close_out()

    def _frames_out(self) -> None:
        """Frames went out: if the queue is empty and a close frame's tail was in it,
        the close is out now."""
        if self._close_tail and not self.peer.queue.frames:
            self._close_tail = False
            self._close_out()

    def _close_out(self) -> None:
        """Our close frame is out, the peer took it: no deadline for that any more, but
        if we closed first, the peer's answer is waited for CLOSE_TIMEOUT, not for ever."""
        waiting = self.peer.awaiting_close
        self._scope.deadline = trio.current_time() + CLOSE_TIMEOUT if waiting else math.inf

    async def _read_loop(self) -> None:
        peer, actor = self.peer, self._actor
        read = self._read_stream if self._fd is None else self._read_socket
        data: bytes | None = b""  # first, what came along with the handshake
        while True:
            messages, todo = peer.receive(data, trio.current_time())
            for message in messages:
                await actor.message(self, message)
            if todo and await self._carry_out(todo):
                return
            data = await read()
            if data is not None:
                self.metrics.bytes_received += len(data)

    async def _read_stream(self) -> bytes | None:
        """The next chunk the stream gives; None once it has ended or broken."""
        try:
            return bytes(await self._stream.receive_some(RECEIVE_BYTES)) or None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None

    async def _read_socket(self) -> bytes | None:
        """The next chunk read from the socket; None once it has ended or broken.

        Waits until the socket is readable, then reads it. ``receive_some`` tries the
        read first and waits only when it fails, which suits a socket that is usually
        readable; a room's peer mostly is not (it waits for answers), so that try was a
        failed system call and a raised BlockingIOError on every round trip. The wait
        is the read's checkpoint: a cancelled connection stops here, and a peer that
        keeps its socket full still lets every other task run between two reads.
        """
        fd = self._fd
        assert fd is not None  # while the connection is served
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
                return os.read(fd, RECEIVE_BYTES) or None
            except BlockingIOError:
                pass  # a spurious wake-up: wait again
            except (OSError, trio.ClosedResourceError):
                return None  # reset, or closed under us

    async def _carry_out(self, todo: int) -> bool:
        """Do what the peer machine left to the transport; True once reading is over."""
        if todo & AUTO:  # first: the auto-response goes out with the kick below
            self.auto_response_timestamp = self._actor.wall_time()
        if todo & WRITE:
            self.kick()
        if todo & CLOSE:
            self._closing()
        if todo & PONG:
            self._expect_pong(False)
        if todo & CUT:
            assert self.peer.cut is not None  # set with the CUT bit
            await self._actor.cut(self, CloseConnection(*self.peer.cut))
        return bool(todo & END)


def _write_now(fd: int, data: bytes) -> int:
    """Write ``data`` to the socket ``fd`` without blocking; the bytes it took (none
    when it is full, or broken: the writer's ``send_all`` finds out which)."""
    try:
        return os.write(fd, data)
    except OSError:
        return 0
