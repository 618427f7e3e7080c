"""The bytes owed to one peer, and the verdicts on them. Pure, no I/O.

A :class:`SendQueue` is the single owner of what a connection owes its peer: the
encoded frames queued, the bytes its writer is writing, and the bytes the output gate
holds for it until a hook's writes are durable. Their sum is bounded by the room's
``max_send_queue``, and the queue alone decides against it: a frame, or a hold, that
would pass the limit is refused, and the peer is a *slow consumer*. That verdict frees
the queue at once and owes the peer a 1008 "slow consumer" close, so the server's
memory does not grow with a client that reads more slowly than its room sends.

The queue also keeps the close frame owed (to go out once the frames before it are
written), a peer's one pong owed (RFC 6455 5.5.3: only the latest ping needs an
answer, so a peer that pings and never reads is owed one pong, not one per ping),
and the accounting of writes: the writer takes everything queued as one ``bytes``
(``take``), and a non-blocking write that the socket took only part of leaves the rest
at the head of the queue (``sent``).
"""

from __future__ import annotations

from typing import Final

from wsproto.events import CloseConnection

from .._closecodes import CloseCode

__all__ = ["SLOW_CONSUMER", "SendQueue"]

#: The close a slow consumer is owed.
SLOW_CONSUMER: Final = CloseConnection(CloseCode.POLICY_VIOLATION, "slow consumer")


class SendQueue:
    """What one connection owes its peer, within ``limit`` bytes.

    Attributes:
      frames: the encoded frames queued, in order (read it; change it through the methods).
      queued: their bytes.
      writing: the bytes the writer took and has not finished writing.
      held: the bytes the output gate holds for the peer.
      close: the close frame owed, once ``frames`` are out; None if none is.
    """

    __slots__ = ("_limit", "_pong", "close", "frames", "held", "queued", "writing")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.frames: list[bytes] = []
        self.queued = self.writing = self.held = 0
        self.close: CloseConnection | None = None
        #: The pong queued and not yet written, with its place in ``frames``.
        self._pong: tuple[int, bytes] | None = None

    @property
    def owed(self) -> int:
        """Every byte owed to the peer: queued, being written, held by the gate."""
        return self.queued + self.writing + self.held

    def push(self, frame: bytes) -> bool:
        """Queue ``frame``; False, and the slow-consumer verdict, if it does not fit."""
        size = len(frame)
        if self.queued + self.writing + self.held + size > self._limit:
            self.cut_off()
            return False
        self.frames.append(frame)
        self.queued += size
        return True

    def hold(self, size: int) -> bool:
        """Count ``size`` bytes the gate holds; False, and the verdict, if they do not fit."""
        if self.queued + self.writing + self.held + size > self._limit:
            self.cut_off()
            return False
        self.held += size
        return True

    def unhold(self, size: int) -> None:
        """Give back ``size`` bytes the gate held (released or dropped)."""
        self.held -= size

    def push_pong(self, frame: bytes) -> bool:
        """Queue the pong ``frame`` in place of a pong still waiting, whole, in the queue;
        else as any frame (False: the slow-consumer verdict)."""
        frames, waiting = self.frames, self._pong
        if waiting is not None:
            at, old = waiting
            if at < len(frames) and frames[at] is old:  # not written yet, not even in part
                frames[at] = frame
                self.queued += len(frame) - len(old)
                self._pong = (at, frame)
                return True
        at = len(frames)
        if not self.push(frame):
            return False
        self._pong = (at, frame)
        return True

    def owe_close(self, frame: CloseConnection) -> None:
        """Owe the peer ``frame``, after the frames queued; it replaces any close owed."""
        self.close = frame

    def cut_off(self) -> None:
        """The slow-consumer verdict: free what is queued, owe the peer a 1008 close.

        The bytes being written and those the gate holds stay counted: the writer and
        the gate give them back themselves.
        """
        self.frames.clear()  # a pong waiting among them is gone too: never replaced
        self.queued = 0
        self.close = SLOW_CONSUMER

    def take(self) -> bytes:
        """Everything queued, as one ``bytes``, for the writer: counted as being written
        until ``written()``."""
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        self.queued, self.writing = 0, len(data)
        return data

    def written(self) -> None:
        """The writer has written what it took."""
        self.writing = 0

    def sent(self, data: bytes, count: int) -> None:
        """A non-blocking write of ``data`` (the queue, joined) took ``count`` bytes: what
        is left of it heads the queue."""
        if count == len(data):
            self.frames.clear()  # no new list per write: this runs per recipient
            self.queued = 0
        else:
            rest = data[count:]
            self.frames = [rest]
            self.queued = len(rest)
