"""One peer's WebSocket as a machine: fed bytes and the time, it says what to do. Pure.

Theory of operation (h11's ``Connection``, websockets' ``Protocol``). A :class:`Peer`
holds its :class:`~roomkit._core.wsreader.FrameReader` (the message being assembled),
the token bucket, the bytes owed to the peer (its
:class:`~roomkit._core.sendqueue.SendQueue`), and the connection's
:mod:`~roomkit._core.lifecycle` phase. Its transport feeds it each chunk read from the
socket with :meth:`Peer.receive`, which returns, for the whole chunk:

* the messages to deliver to the room, in order (the peer's own objects: ``str``,
  ``bytes``, or the room protocol's decoded messages; nothing is made per message);
* an ``int`` of :data:`Todo` bits for the rest: frames were queued (``WRITE``: kick
  the queue), a close is owed (``CLOSE``), the reader cut the peer off (``CUT``: tell
  the room, behind the messages, to close it with :attr:`Peer.cut`), the awaited pong
  came (``PONG``), the reader is done (``END``), the auto-response was queued
  (``AUTO``: the transport notes the wall time, which this machine does not know).

Everything the peer is answered directly goes into the queue here: the auto-response,
the error reply to a message that does not decode, the ``rate_limited`` reply to a
dropped one, and pongs (one owed at most). The room's own sends are the transport's.

The decisions, in order, for each complete message: it takes a token (allow; drop,
answered with ``rate_limited``; flood, a cut with 1008); an auto-response request is
answered here (a text request is only answered for a text message, a binary one for
a binary message); in a typed room, a binary message or one that does not decode is
answered with an error; what is left is delivered. A message past the size limit is
cut with 1009 as soon as its size is known. Pings take a token too, and one that finds
none goes unanswered (counting toward the flood); pongs take none.

The closing handshake: a close frame from the peer is answered (``CLOSE``) and ends
the reading, clean; the peer's answer to our close ends it, clean; a protocol error
(the FrameReader's 1002 or 1007) is a cut with that code, unclean; the end of the stream
without a close frame is 1006, unclean. :attr:`Peer.report` is what ``on_close`` is
told.
"""

from __future__ import annotations

from typing import Any, Final

from wsproto.connection import ConnectionState as WSState
from wsproto.events import CloseConnection, Ping, Pong

from .._closecodes import CloseCode
from .._errors import DecodeError
from .._metrics import CutReason, RoomMetrics
from .._protocol import Protocol, error_message
from . import envelope
from .frames import OPCODE_PING, OPCODE_PONG, encode_close, encode_frame, encode_message
from .lifecycle import PUBLIC, ConnectionState, Phase, Trigger, advance
from .limits import RATE_LIMITED, RATE_LIMITED_TEXT
from .ratelimit import RateLimit, TokenBucket, Verdict
from .sendqueue import SendQueue
from .wsreader import Broken, FrameReader, TooBig

__all__ = ["AUTO", "CLOSE", "CUT", "END", "PING", "PONG", "TIMEOUT", "WRITE", "Peer"]

# Todo bits, what receive() and heartbeat() leave to the transport.
WRITE: Final = 1  # frames were queued: kick the queue
CLOSE: Final = 2  # a close is owed (the queue's close): the writer has work
CUT: Final = 4  # the reader cut the peer off: have the room close it with Peer.cut
PONG: Final = 8  # the pong awaited came: schedule the next ping
END: Final = 16  # nothing more is read: the peer closed, broke the protocol, or left
PING: Final = 32  # a ping was queued: kick, and expect its pong
TIMEOUT: Final = 64  # the last ping went unanswered: drop the connection
AUTO: Final = 128  # the auto-response was queued (with WRITE): note when, on the wall clock

#: The payload of roomkit's pings.
PING_PAYLOAD: Final = b"roomkit"

_ANSWERS_PINGS: Final = (Phase.OPEN, Phase.CLOSING)
#: A tuple, not a union, for the isinstance check made per message (about twice as fast).
_DATA: Final = (str, bytes)

#: The rate-limit reply to a roomkit.v1 peer: an unlogged enveloped message.
_RATE_LIMITED_ENVELOPED: Final = envelope.encode(RATE_LIMITED_TEXT, None)


def _enveloped_reply(text: str) -> bytes:
    """roomkit's own reply ``text`` to a roomkit.v1 peer."""
    return envelope.encode(text, None)


class Peer:
    """One peer's WebSocket: what it sent, what it is owed, where it is in its life.

    Args:
      received: the bytes that came along with the handshake (the first frames of a
        client that did not wait for its 101), read first.
      now: the time it reached its room (any monotonic clock, in seconds).
      max_message_size: bytes; a bigger message is a cut with 1009.
      max_send_queue: bytes that may be owed to the peer (see SendQueue).
      rate_limit: the token bucket's setting, or None for no limit.
      auto_response: the request answered here and its answer, framed (enveloped, for
        a roomkit.v1 peer); or None.
      enveloped: the peer asked for the roomkit.v1 envelope: roomkit's own replies
        (rate_limited, a message that does not decode) are sent in it.
      protocol: the room's typed messages, or None for raw ``str``/``bytes``.
      metrics: the counters of its Room class.

    Attributes:
      phase: where it is in its life; ``state`` is what rooms see of it.
      queue: the bytes owed to the peer.
      last_seen: when the peer last completed a message.
      cut: the close the reader's cut owes the peer, ``(code, reason)``; None before.
      cut_reason: why roomkit closed the connection, if it did (the first reason).
    """

    __slots__ = (
        "_auto",
        "_awaiting_pong",
        "_bucket",
        "_close_code",
        "_close_reason",
        "_encode_reply",
        "_metrics",
        "_protocol",
        "_rate_limited",
        "_reader",
        "_trailing",
        "_was_clean",
        "_ws_state",
        "cut",
        "cut_reason",
        "last_seen",
        "phase",
        "queue",
        "state",
    )

    def __init__(
        self,
        received: bytes,
        now: float,
        *,
        max_message_size: int,
        max_send_queue: int,
        rate_limit: RateLimit | None,
        auto_response: tuple[str | bytes, bytes] | None,
        protocol: Protocol | None,
        metrics: RoomMetrics,
        enveloped: bool = False,
    ) -> None:
        self._reader = FrameReader(max_message_size)
        self._ws_state = WSState.OPEN  # the closing handshake, as wsproto's states
        self._trailing = received or None  # read on the first receive
        # roomkit's own replies, in the form the peer reads (docs/recovery.md): the
        # envelope's unlogged message for a roomkit.v1 peer.
        self._encode_reply = _enveloped_reply if enveloped else encode_message
        self._rate_limited = _RATE_LIMITED_ENVELOPED if enveloped else RATE_LIMITED
        self._bucket = None if rate_limit is None else TokenBucket(rate_limit, now)
        self._auto = auto_response
        self._protocol = protocol
        self._metrics = metrics
        self._awaiting_pong = False
        self.queue: Final = SendQueue(max_send_queue)
        self.phase = Phase.CONNECTING
        self.state = ConnectionState.CONNECTING
        self.last_seen = now
        self.cut: tuple[int, str] | None = None
        self.cut_reason: CutReason | None = None
        # What on_close reports.
        self._close_code: int = CloseCode.ABNORMAL_CLOSURE
        self._close_reason = ""
        self._was_clean = False

    # The lifecycle.

    def move(self, trigger: Trigger) -> None:
        """Take the connection where ``trigger`` leads (see the lifecycle table)."""
        self.phase = phase = advance(self.phase, trigger)
        self.state = PUBLIC[phase]

    def owe_close(self, frame: CloseConnection) -> None:
        """Owe the peer ``frame`` once what is queued is out: the connection is closing."""
        self.queue.owe_close(frame)
        self.move(Trigger.CLOSE)

    def slow_consumer(self) -> None:
        """The queue refused a frame or a hold (and owes the 1008 close): closing."""
        self.note_cut("slow_consumer")
        self.move(Trigger.CLOSE)

    def note_cut(self, reason: CutReason) -> None:
        """Count a cut of roomkit's; the first reason stands (and goes in the log).

        A peer cut off for one thing may well break another rule before it is gone,
        and it is one connection cut.
        """
        if self.cut_reason is None:
            self.cut_reason = reason
            self._metrics.cut[reason] += 1

    def closed_by_room(self, code: int, reason: str) -> None:
        """The room closed the connection while its session was parked: ``on_close``
        reports that close, as one roomkit made (clean)."""
        self._close_code, self._close_reason, self._was_clean = code, reason, True

    @property
    def report(self) -> tuple[int, str, bool]:
        """What ``on_close`` is told: the close code, its reason, and ``was_clean``."""
        return self._close_code, self._close_reason, self._was_clean

    @property
    def buffered(self) -> int:
        """Bytes of a message received in part, waiting for its other fragments."""
        return self._reader.buffered

    @property
    def awaiting_close(self) -> bool:
        """Whether our close frame is out and the peer's answer awaited."""
        return self._ws_state is WSState.LOCAL_CLOSING

    @property
    def close_sent(self) -> bool:
        """Whether our close frame was made (:meth:`close_frame`): none may follow."""
        return self._ws_state is WSState.LOCAL_CLOSING or self._ws_state is WSState.CLOSED

    def close_frame(self, frame: CloseConnection) -> bytes | None:
        """The bytes of ``frame``, or None when no close may be sent (one was, both ways)."""
        state = self._ws_state
        if state is WSState.OPEN:
            self._ws_state = WSState.LOCAL_CLOSING
        elif state is WSState.REMOTE_CLOSING:
            self._ws_state = WSState.CLOSED
        else:
            return None
        return encode_close(frame.code, frame.reason)

    # Reading.

    def receive(self, data: bytes | None, now: float) -> tuple[list[Any], int]:
        """Take ``data`` read from the socket (None: the stream ended; ``b""``: nothing
        new, for what came along with the handshake) at ``now``.

        Returns the messages to deliver, in order, and the Todo bits of the rest.
        """
        messages: list[Any] = []
        if data is None:  # the stream ended without a close frame: 1006, unclean
            self._ws_state = WSState.CLOSED
            return messages, self._closed(CloseConnection(CloseCode.ABNORMAL_CLOSURE), eof=True)
        todo = 0
        trailing = self._trailing
        if trailing is not None:  # first, what came along with the handshake
            self._trailing = None
            data = trailing + data
        for event in self._reader.feed(data):
            if isinstance(event, _DATA):
                todo |= self._data(event, now, messages)
            elif isinstance(event, TooBig):
                todo |= self._cut("message_too_big", CloseCode.MESSAGE_TOO_BIG, "Message too big")
            elif isinstance(event, Ping):
                todo |= self._ping(event, now)
            elif isinstance(event, Pong):
                if self._awaiting_pong:
                    self._awaiting_pong = False
                    todo |= PONG
            elif isinstance(event, CloseConnection):
                return messages, todo | self._closed(event, eof=False)
            elif isinstance(event, Broken):
                return messages, todo | self._broken(event)
        return messages, todo

    def _data(self, message: str | bytes, now: float, messages: list[Any]) -> int:
        """One whole message: delivered (appended to ``messages``), or a Todo."""
        if self.phase is not Phase.OPEN:
            return 0  # deaf or closing: what the peer still sends is discarded
        self._metrics.messages_received += 1
        self.last_seen = now
        verdict = Verdict.ALLOW if self._bucket is None else self._bucket.take(now)
        if verdict is Verdict.DROP:
            return self._reply(self._rate_limited)
        if verdict is Verdict.FLOOD:
            return self._flooded()
        auto = self._auto
        if auto is not None and type(message) is type(auto[0]) and message == auto[0]:
            return self._reply(auto[1], WRITE | AUTO)  # answered here: the room is not woken
        protocol = self._protocol
        if protocol is not None:
            try:
                if isinstance(message, bytes):
                    raise DecodeError("binary messages are not part of this room's protocol")
                message = protocol.client.decode(message)
            except DecodeError as exc:
                return self._reply(self._encode_reply(error_message(str(exc))))
        messages.append(message)
        return 0

    def _ping(self, ping: Ping, now: float) -> int:
        """Answer a ping, if it finds a token (one that does not counts toward the flood)."""
        if self._ws_state is not WSState.OPEN or self.phase not in _ANSWERS_PINGS:
            return 0
        verdict = Verdict.ALLOW if self._bucket is None else self._bucket.take(now)
        if verdict is Verdict.ALLOW:
            if self.queue.push_pong(encode_frame(OPCODE_PONG, ping.payload)):
                return WRITE
            self.slow_consumer()
            return CLOSE
        return self._flooded() if verdict is Verdict.FLOOD else 0

    def _closed(self, event: CloseConnection, *, eof: bool) -> int:
        """The peer's close frame (or the end of the stream): record how it ended."""
        self._close_code, self._close_reason = int(event.code), event.reason or ""
        if eof:  # the stream ended without a close frame: 1006, unclean
            return END
        if self._ws_state is WSState.OPEN:
            self._ws_state = WSState.REMOTE_CLOSING
        elif self._ws_state is WSState.LOCAL_CLOSING:
            self._ws_state = WSState.CLOSED
        if self._ws_state is WSState.REMOTE_CLOSING:  # the peer closed first: answer it
            self._was_clean = True
            self.owe_close(event.response())  # even if we were closing ourselves
            return CLOSE | END
        # The peer answered our close.
        self._was_clean = True
        return END

    def _broken(self, event: Broken) -> int:
        """The reader found a protocol error (1002, 1007): tell the peer, then drop it."""
        self._close_code, self._close_reason, self._was_clean = event.code, event.reason, False
        return END | self._cut("protocol_error", event.code, event.reason)

    def _flooded(self) -> int:
        return self._cut("rate_limit", CloseCode.POLICY_VIOLATION, "rate limit exceeded")

    def _cut(self, reason: CutReason, code: int, text: str) -> int:
        """The reader's cut: nothing more the peer sends is delivered, and the room is
        to close it with ``(code, text)`` after the replies to what it was given."""
        if self.phase is not Phase.OPEN:
            return 0
        self.move(Trigger.DEAFEN)
        self.note_cut(reason)
        self.cut = (code, text)
        return CUT

    def _reply(self, frame: bytes, queued: int = WRITE) -> int:
        """Queue a direct answer to the peer, counted as a message sent; the Todo bits
        ``queued`` if it fits."""
        if self.queue.push(frame):
            self._metrics.messages_sent += 1
            return queued
        self.slow_consumer()
        return CLOSE

    # Pings.

    def heartbeat(self) -> int:
        """Ping the peer, or give up on it if the last ping went unanswered.

        Returns PING (a ping is queued: its pong is awaited), TIMEOUT (drop the
        connection: it is gone, or hopelessly stuck), CLOSE (the ping did not fit:
        a slow consumer), or 0 (the connection is not open: nothing to do).
        """
        if self.state is not ConnectionState.OPEN or self._ws_state is not WSState.OPEN:
            return 0
        if self._awaiting_pong:
            self.note_cut("ping_timeout")
            return TIMEOUT
        if not self.queue.push(encode_frame(OPCODE_PING, PING_PAYLOAD)):  # counted like any frame
            self.slow_consumer()
            return CLOSE
        self._awaiting_pong = True
        return PING
