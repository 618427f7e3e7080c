"""The limits a server and a proxy put on their peers, and the assembler of incoming
messages that enforces the size limit. Pure, no I/O.

One definition of each, for ``serve`` (through ``Room``'s class attributes) and
``proxy`` alike, so that a proxy in front of a server gives its clients what the
server would: the same message size, rate, connections and handshake time.

:class:`MessageAssembler` puts a message together from the data of the frames it came
in, counting its size as the peer sent it (bytes on the wire, UTF-8 for text), and
refuses it as soon as that size passes the limit: what a peer sends past the limit is
never kept, so a connection holds at most the limit of a half-received message.
"""

from __future__ import annotations

from typing import Any, Final

from .._protocol import error_message
from .frames import encode_message
from .ratelimit import RateLimit

__all__ = [
    "CLOSE_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE_SIZE",
    "MAX_REQUEST_SIZE",
    "RATE_LIMIT",
    "RATE_LIMITED",
    "RATE_LIMITED_TEXT",
    "TLS_CLOSE_TIMEOUT",
    "MessageAssembler",
    "MessageTooBig",
    "byte_length",
]

#: Largest incoming message, in bytes on the wire (1 MiB): far above a chat line or a
#: game state, far below what a flood of peers could make a process hold.
MAX_MESSAGE_SIZE: Final = 1 << 20
#: Largest body of a plain HTTP request to a room, and of a call's arguments (1 MiB).
MAX_REQUEST_SIZE: Final = 1 << 20
#: Connections a room (and a proxy) holds at once; more are refused with 503.
MAX_CONNECTIONS: Final = 10_000
#: Each connection's incoming messages: 100 a second, bursts of 200.
RATE_LIMIT: Final = RateLimit(per_second=100, burst=200)
#: Seconds a client has to finish its TLS handshake and send its request head.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Seconds the end of a TLS stream may take for its close_notify, either way: after a
#: plain-HTTP answer, or at the end of a relay. A peer that never answers is dropped.
TLS_CLOSE_TIMEOUT: Final = 1.0
#: Seconds a peer has to answer our close frame before its TCP connection is dropped.
CLOSE_TIMEOUT: Final = 5.0

#: The text that answers a message dropped by the rate limit...
RATE_LIMITED_TEXT: Final = error_message(
    "too many messages: this one was dropped", code="rate_limited"
)
#: ...and its frame.
RATE_LIMITED: Final = encode_message(RATE_LIMITED_TEXT)

_BINARY: Final = (bytes, bytearray)


class MessageTooBig(Exception):
    """Raised when a message being received passes its size limit; close with 1009."""


class MessageAssembler:
    """One connection's incoming message, fragment by fragment, within ``limit`` bytes.

    Feed it the data of each data event (wsproto's ``TextMessage``/``BytesMessage``,
    parts of frames included) in order; it returns the message once the last part is
    in. Most messages come whole, in one frame, and are returned as they are.
    """

    __slots__ = ("_limit", "_parts", "_size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[Any] = []  # str for text, bytes for binary
        self._size = 0  # bytes on the wire of the message so far

    @property
    def buffered(self) -> int:
        """Bytes held of a message received in part, waiting for the rest."""
        return self._size if self._parts else 0

    def feed(self, data: str | bytes | bytearray, finished: bool) -> str | bytes | None:
        """Add the next part of the message; the whole message if ``finished``, else None.

        Raises:
          MessageTooBig: if the message so far passes the limit. What was held of it is
            dropped: the connection is to be closed with 1009.
        """
        self._size += byte_length(data)
        if self._size > self._limit:
            self._parts.clear()
            self._size = 0
            raise MessageTooBig(f"a message is at most {self._limit} bytes")
        if not finished:
            self._parts.append(data)
            return None
        self._size = 0
        if not self._parts:
            return data if isinstance(data, str) else bytes(data)
        parts, self._parts = self._parts, []
        parts.append(data)
        return "".join(parts) if isinstance(data, str) else b"".join(parts)


def byte_length(data: str | bytes | bytearray) -> int:
    """The length of ``data`` on the wire (UTF-8 for text)."""
    if isinstance(data, _BINARY) or data.isascii():
        return len(data)
    return len(data.encode("utf-8"))
