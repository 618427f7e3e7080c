"""A room's WebSocket connection on the wire: its reader loop and its writer task.

Theory of operation. A :class:`Transport` is one peer's socket in a room. It has one
reader and one writer, both tasks in its room's nursery, and it is what the room holds
and sends to; the hooks see its :class:`~roomkit._connection.Connection` handle.

* ``push`` (what ``send``, ``close`` and a room's ``broadcast`` come to) only appends
  to the queue of encoded frames, then kicks it; it never blocks and never awaits.
* A kick writes the queue straight to the socket (one non-blocking write) when the
  writer task is idle; whatever the socket does not take wakes the writer, which takes
  *everything* queued and writes it with one ``send_all``. So a burst of messages costs
  one system call, not one each, and usually no task switch at all.
* The reader feeds received bytes to wsproto and turns its events into room events
  (message, close), answering pings itself.

What the room and the output gate call, per recipient of a hook's sends:
``hold(size) -> bool`` counts bytes the gate keeps for it (False: it takes no more),
``unhold(size)`` gives them back, ``push(item, kick=False)`` queues a released frame,
and ``kick()`` then writes what was queued, once per recipient.

States::

    CONNECTING --open()--> OPEN --close sent or received--> CLOSING --> CLOSED
        \\--reject()----------------------------------------------------/

A connection becomes OPEN when its ``on_connect`` starts: from then on it is among the
room's connections and sends to it are queued (those made before the handshake is
answered go out right after it). Once closing, sends are silently dropped: the peer
may vanish at any moment, and a room should not have to race it.

Closing: whoever closes first sends a close frame; the other side answers with one, and
the server then drops the TCP connection. A peer that does not answer our close frame
within ``CLOSE_TIMEOUT`` is dropped anyway, and its close counts as unclean (1006).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from ._closecodes import CloseCode
from ._connection import Connection, ConnectionState
from ._connlog import connection_fields, log_closed, log_failed, log_opened, log_refused
from ._core.frames import encode_message
from ._core.frontdoor import Response
from ._core.limits import CLOSE_TIMEOUT, RATE_LIMITED, MessageAssembler, MessageTooBig
from ._core.ratelimit import TokenBucket, Verdict
from ._core.sendqueue import SendQueue
from ._errors import DecodeError
from ._metrics import CutReason, RoomMetrics
from ._protocol import error_message
from ._request import Request
from ._roomid import RoomId

if TYPE_CHECKING:
    from ._room import Room

__all__ = ["RoomSide", "Transport"]


#: Tuples, not unions, for the isinstance checks made per message (about twice as fast).
_DATA_EVENTS: Final = (TextMessage, BytesMessage)
#: Bytes asked of the socket per read: big enough for a burst of small messages.
RECEIVE_BYTES: Final = 64 * 1024


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

    async def connect(self, conn: Transport) -> tuple[int, str] | None:
        """Run ``on_connect``; None to accept, or the ``(status, reason)`` to refuse."""

    async def message(self, conn: Transport, message: Any) -> None: ...

    async def cut(self, conn: Transport, frame: CloseConnection) -> None:
        """Close ``conn`` after the messages it has already delivered."""

    async def closed(self, conn: Transport) -> None: ...

    def emit(self, item: bytes | CloseConnection, recipients: Iterable[Transport]) -> None: ...

    def encode(self, message: Any) -> bytes: ...

    def close_behind(self, conns: Sequence[Transport], frame: CloseConnection) -> None: ...

    def retag(self, conn: Transport, old: tuple[str, ...], new: tuple[str, ...]) -> None: ...

    def set_timer(self, key: tuple[str, Hashable], deadline: float) -> None: ...

    def cancel_timer(self, key: tuple[str, Hashable]) -> None: ...


class Transport:
    """One peer's WebSocket in a room: what the room sends to, and its two loops.

    Attributes:
      handle: the connection as its room's hooks see it.
      state: where the connection is in its life (see the module docstring).
      last_seen: when the peer last sent a message, in Trio's clock.
      tags: the connection's tags, as the room's tag index has them.
      queue: the bytes owed to the peer, and the verdicts on them.
      metrics: its Room class's counters.
    """

    # Slots: a server holds thousands of these, each touched per message.
    __slots__ = (
        "_accept",
        "_actor",
        "_alone",
        "_awaiting_pong",
        "_bucket",
        "_close_code",
        "_close_reason",
        "_cut_reason",
        "_deaf",
        "_fd",
        "_message",
        "_read_scope",
        "_serve_scope",
        "_stream",
        "_wakeup",
        "_was_clean",
        "_writer_done",
        "_ws",
        "handle",
        "last_seen",
        "metrics",
        "queue",
        "state",
        "tags",
    )

    def __init__(
        self,
        actor: RoomSide,
        stream: trio.abc.Stream,
        ws: WSConnection,
        accept: bytes,
        request: Request,
    ) -> None:
        self.handle: Final = Connection(self, request)
        self.state = ConnectionState.CONNECTING
        self.last_seen = trio.current_time()
        self.tags: tuple[str, ...] = ()
        self.metrics: Final = actor.metrics
        self._actor = actor
        self._alone = (self,)  # the recipients of a send to this connection alone
        self._stream = stream
        self._ws = ws
        self._accept: bytes | None = accept  # the 101 response, until it is sent
        self.queue: Final = SendQueue(actor.room_class.max_send_queue)
        #: The socket's file descriptor while it is open and past its handshake, for
        #: writes that need no task (see kick); None otherwise.
        self._fd: int | None = None
        limit = actor.room_class.rate_limit
        self._bucket = None if limit is None else TokenBucket(limit, trio.current_time())
        self._wakeup = trio.Event()
        self._read_scope = trio.CancelScope()
        self._serve_scope = trio.CancelScope()
        self._writer_done = trio.Event()
        self._awaiting_pong = False
        #: Set once what the peer sends is no longer delivered: it is being cut off, or
        #: the server is draining. Frames are still read, for the peer's close.
        self._deaf = False
        self._message = MessageAssembler(actor.room_class.max_message_size)
        # What on_close reports.
        self._close_code: int = CloseCode.ABNORMAL_CLOSURE
        self._close_reason = ""
        self._was_clean = False
        self._cut_reason: CutReason | None = None  # why roomkit closed it, if it did

    def __repr__(self) -> str:
        return f"<Transport {self.handle.id} room={self.handle.request.room!r} {self.state.value}>"

    # The handle's Peer protocol.

    def retag(self, tags: tuple[str, ...]) -> None:
        self._actor.retag(self, self.tags, tags)
        self.tags = tags

    def send(self, message: Any) -> None:
        actor = self._actor
        actor.emit(actor.encode(message), self._alone)

    def close(self, code: int, reason: str) -> None:
        self._actor.emit(CloseConnection(code, reason), self._alone)

    # The room's side: called by the actor, the output gate and the server.

    @property
    def close_report(self) -> tuple[int, str, bool]:
        """What ``on_close`` is told: the close code, its reason, and ``was_clean``."""
        return self._close_code, self._close_reason, self._was_clean

    def open(self) -> None:
        """The room admits the connection: its ``on_connect`` starts."""
        self.state = ConnectionState.OPEN

    def reject(self) -> None:
        """The room refuses the handshake (or failed to decide it): it ends here."""
        self.state = ConnectionState.CLOSED

    def push(self, item: bytes | CloseConnection, *, kick: bool = True) -> None:
        """Queue an encoded frame, or ask for a close; dropped once the connection is closing.

        A frame that would take the bytes waiting for this peer past ``max_send_queue``
        cuts the connection off as a slow consumer instead. With ``kick=False`` the
        caller kicks once after queueing several frames, so they go out in one write.
        """
        if self.state not in (ConnectionState.CONNECTING, ConnectionState.OPEN):
            return
        if isinstance(item, CloseConnection):
            self._queue_close(item)
        elif self.queue.push(item):
            self.metrics.messages_sent += 1
            if kick:
                self.kick()
        else:
            self._cut_off()

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes that the output gate holds for this connection.

        Returns False (and cuts the connection off, if that is why) when the connection
        takes no more: the gate then keeps nothing for it.
        """
        if self.state is not ConnectionState.OPEN:
            return False
        if self.queue.hold(size):
            return True
        self._cut_off()
        return False

    def unhold(self, size: int) -> None:
        """Give back ``size`` bytes the output gate held for this connection."""
        self.queue.unhold(size)

    def buffered(self) -> int:
        """Bytes of a message received in part, waiting for its other fragments."""
        return self._message.buffered

    def cut(self, reason: CutReason, code: int, text: str) -> None:
        """Close the connection on roomkit's own account (not the room's) for ``reason``,
        behind what the room has already sent it (released, or held at the output gate)."""
        if self.state in (ConnectionState.CONNECTING, ConnectionState.OPEN):
            self._count_cut(reason)
            self._actor.close_behind(self._alone, CloseConnection(code, text))

    async def _refuse_more(self, reason: CutReason, code: int, text: str) -> None:
        """The reader's cut: nothing more the peer sends is delivered, and the close
        goes out after the replies to every message already delivered to the room."""
        if self.state is ConnectionState.OPEN and not self._deaf:
            self._deaf = True
            self._count_cut(reason)
            await self._actor.cut(self, CloseConnection(code, text))

    def drain(self) -> None:
        """The server is shutting down: deliver nothing more that the peer sends."""
        self._deaf = True

    def _count_cut(self, reason: CutReason) -> None:
        """Count the cut in the metrics; its reason goes in the close's log line.

        The first reason stands: a peer cut off for one thing may well break another
        rule before it is gone, and it is one connection cut.
        """
        if self._cut_reason is None:
            self._cut_reason = reason
            self.metrics.cut[reason] += 1

    def _cut_off(self) -> None:
        """The queue found a slow consumer (it freed itself and owes the 1008 close):
        close it, and drop it if it cannot even take the close frame within
        ``CLOSE_TIMEOUT``. The room never waits for it."""
        self._count_cut("slow_consumer")
        self._closing()

    def _queue_close(self, frame: CloseConnection) -> None:
        """Have the writer send ``frame`` once the queue is out; whatever the state."""
        self.queue.owe_close(frame)
        self._closing()

    def _closing(self) -> None:
        """A close is owed: the connection is closing, and the writer has work.

        A peer that roomkit cuts off has ``CLOSE_TIMEOUT`` to take what is queued and
        the close frame: one that stopped reading (a flooder, say) is dropped then,
        instead of holding its connection for as long as it likes. A room's own close
        waits for a slow reader, as its sends do.
        """
        self.state = ConnectionState.CLOSING
        if self._cut_reason is not None:
            deadline = trio.current_time() + CLOSE_TIMEOUT
            self._serve_scope.deadline = min(self._serve_scope.deadline, deadline)
        self._wakeup.set()

    def kick(self) -> None:
        """Get what is queued moving.

        When the writer is idle, the queue is written straight to the socket, which does
        not block: usually the kernel takes it all, and no task had to wake for it (two
        trips through Trio's scheduler saved per write). Whatever the socket does not
        take, and any close, is left to the writer task.
        """
        queue, fd = self.queue, self._fd
        frames = queue.frames
        if fd is not None and frames and not queue.writing:
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            try:
                sent = os.write(fd, data)
            except OSError:  # full (BlockingIOError), or broken: the writer finds out
                sent = 0
            if sent:
                self.metrics.bytes_sent += sent
                queue.sent(data, sent)
        if queue.frames or queue.close is not None:
            self._wakeup.set()

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
            accept, self._accept = self._accept, None
            assert accept is not None
            await self._stream.send_all(accept)
            self.metrics.connections_opened += 1
            log_opened(self.log_fields)
            if isinstance(self._stream, trio.SocketStream) and os.name == "posix":
                self._fd = self._stream.socket.fileno()
            self.kick()  # what on_connect sent
            self._expect_pong(False)
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer left during the handshake
        except Exception:
            # roomkit's own code failed serving this connection (a bug): that ends this
            # connection only, with 1011 if it is open, else without an answer.
            log_failed(self.log_fields)
            self.metrics.internal_errors += 1
            self._count_cut("internal_error")
            # Not if a write was cut short, or a frame's tail waits: mid-frame, a close
            # frame would corrupt the stream.
            idle = not self.queue.writing and not self.queue.frames
            if opened and idle and self._ws.state in (WSState.OPEN, WSState.REMOTE_CLOSING):
                frame = CloseConnection(CloseCode.INTERNAL_ERROR, "Internal error")
                gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
                with trio.move_on_after(CLOSE_TIMEOUT), gone:
                    await self._stream.send_all(self._ws.send(frame))
        finally:
            self._fd = None  # before the close: the number may be reused at once
            self.state = ConnectionState.CLOSED
            self._actor.cancel_timer(("ping", self))
            await trio.aclose_forcefully(self._stream)
            if opened:
                log_closed(
                    self.log_fields,
                    self._close_code,
                    self._close_reason,
                    self._was_clean,
                    self._cut_reason,
                )
                await self._actor.closed(self)

    def log_fields(self) -> dict[str, Any]:
        """What log lines about this connection carry as fields (``extra=``)."""
        return connection_fields(self._actor.room, self.handle)

    def heartbeat(self) -> None:
        """Called by the server's scheduler: ping the peer, or drop it if it never answered.

        A peer that does not answer within ``ping_timeout`` is gone (or hopelessly
        stuck): its TCP connection is dropped at once, without a closing handshake it
        would never finish, and ``on_close`` gets 1006.
        """
        if self.state is not ConnectionState.OPEN or self._ws.state is not WSState.OPEN:
            return
        if self._awaiting_pong:
            self._count_cut("ping_timeout")
            self._serve_scope.cancel()
            return
        if self.queue.push(self._ws.send(Ping(b"roomkit"))):  # counted like any frame
            self.kick()
            self._expect_pong(True)
        else:
            self._cut_off()

    def _expect_pong(self, waiting: bool) -> None:
        """Schedule the next ping, or (``waiting``) the deadline for the pong just asked for."""
        room = self._actor.room_class
        if room.ping_interval is None:
            return
        self._awaiting_pong = waiting
        wait = room.ping_timeout if waiting else room.ping_interval
        self._actor.set_timer(("ping", self), trio.current_time() + wait)

    async def _serve(self) -> None:
        with self._serve_scope:
            await self._serve_until_closed()

    async def _serve_until_closed(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop)
            with self._read_scope:
                await self._read_loop()
            if self._close_code != CloseCode.ABNORMAL_CLOSURE:
                # The peer is still there: give the writer the time to send our close reply.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._writer_done.wait()
            nursery.cancel_scope.cancel()

    async def _write_loop(self) -> None:
        queue = self.queue
        try:
            while True:
                if not queue.frames and queue.close is None:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                if queue.frames:
                    data = queue.take()
                    await self._stream.send_all(data)
                    self.metrics.bytes_sent += len(data)
                    queue.written()
                elif queue.close is not None:
                    await self._write_close(queue.close)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._read_scope.cancel()  # the peer is gone: nothing more will be read
        finally:
            self._writer_done.set()

    async def _write_close(self, frame: CloseConnection) -> None:
        if self._ws.state in (WSState.OPEN, WSState.REMOTE_CLOSING):
            data = self._ws.send(frame)
            await self._stream.send_all(data)
            self.metrics.bytes_sent += len(data)
        self._serve_scope.deadline = math.inf  # the frame is out: the peer took it
        if self._ws.state is WSState.LOCAL_CLOSING:
            # We closed first: wait for the peer's answer, but not for ever.
            self._read_scope.deadline = trio.current_time() + CLOSE_TIMEOUT

    async def _read_loop(self) -> None:
        eof = False
        while True:
            for event in self._ws.events():  # first, what came along with the handshake
                if isinstance(event, CloseConnection):
                    await self._peer_closed(event, clean=not eof)
                    return
                await self._on_event(event)
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.metrics.bytes_received += len(data)
            eof = not data
            self._ws.receive_data(bytes(data) or None)

    async def _on_event(self, event: object) -> None:
        if isinstance(event, _DATA_EVENTS):
            if self.state is not ConnectionState.OPEN or self._deaf:
                return  # closing: what the peer still sends is discarded
            try:
                message = self._message.feed(event.data, event.message_finished)
            except MessageTooBig:
                code, text = CloseCode.MESSAGE_TOO_BIG, "Message too big"
                await self._refuse_more("message_too_big", code, text)
                return
            if message is not None:
                self.metrics.messages_received += 1
                self.last_seen = now = trio.current_time()
                verdict = Verdict.ALLOW if self._bucket is None else self._bucket.take(now)
                if verdict is Verdict.ALLOW:
                    await self._deliver(message)
                elif verdict is Verdict.DROP:
                    self.push(RATE_LIMITED)
                else:
                    await self._flooded()
        elif isinstance(event, Ping):
            if self._ws.state is not WSState.OPEN or self._deaf:
                return
            # A ping takes a token like a message: one that finds none goes unanswered,
            # and counts toward the flood.
            verdict = (
                Verdict.ALLOW if self._bucket is None else self._bucket.take(trio.current_time())
            )
            if verdict is Verdict.ALLOW:
                self._answer(event)
            elif verdict is Verdict.FLOOD:
                await self._flooded()
        elif isinstance(event, Pong) and self._awaiting_pong:
            self._expect_pong(False)

    async def _flooded(self) -> None:
        await self._refuse_more("rate_limit", CloseCode.POLICY_VIOLATION, "rate limit exceeded")

    def _answer(self, ping: Ping) -> None:
        """Queue the pong for ``ping``: a peer is owed only the latest (see SendQueue)."""
        if self.queue.push_pong(self._ws.send(ping.response())):
            self.kick()
        else:
            self._cut_off()

    async def _peer_closed(self, event: CloseConnection, *, clean: bool) -> None:
        """Record how the connection ended and answer a close frame that needs an answer."""
        self._close_code, self._close_reason = int(event.code), event.reason or ""
        if not clean:  # TCP ended without a close frame
            self._close_code, self._was_clean = CloseCode.ABNORMAL_CLOSURE, False
        elif self._ws.state is WSState.REMOTE_CLOSING:  # the peer closed first: answer it
            self._was_clean = True
            self._queue_close(event.response())  # even if we were closing ourselves
        elif self._ws.state is WSState.CLOSED:  # the peer answered our close
            self._was_clean = True
        else:  # wsproto found a protocol error (1002, 1007): tell the peer, then drop it
            self._was_clean = False
            await self._refuse_more("protocol_error", event.code, event.reason or "")

    async def _deliver(self, message: Any) -> None:
        auto = self._actor.auto_response
        if auto is not None and type(message) is type(auto[0]) and message == auto[0]:
            self.push(auto[1])  # answered here: the room is not woken
            return
        protocol = self._actor.room_class.protocol
        if protocol is not None:
            try:
                if isinstance(message, bytes):
                    raise DecodeError("binary messages are not part of this room's protocol")
                message = protocol.client.decode(message)
            except DecodeError as exc:
                self.push(encode_message(error_message(str(exc))))
                return
        await self._actor.message(self, message)
