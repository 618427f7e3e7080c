"""The TCP edge shared by ``serve`` and ``proxy``: accepting, and reading request heads.

Both read a new connection's request head the same way, with :func:`read_request`: at
most ``MAX_HEAD`` bytes (431 beyond), within one deadline (with the TLS handshake, for
``serve`` over TLS), parsed (400 if it is not HTTP); what comes after the head is kept,
as the first bytes of a WebSocket.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import attrs
import trio

from ._core.frontdoor import RequestHead, Response, parse_head
from ._metrics import RefusalReason

__all__ = [
    "MAX_HEAD",
    "Head",
    "accept_loop",
    "close_now",
    "read_head",
    "read_request",
    "remote_address",
]

logger = logging.getLogger("roomkit.server")

#: Largest request head accepted, in bytes (431 beyond); browsers send well under 8 KiB.
MAX_HEAD: Final = 16 * 1024
#: Bytes asked of the socket per read while a head arrives.
_HEAD_CHUNK: Final = 16 * 1024
#: Seconds to pause accepting when out of file descriptors or memory, so that closing
#: connections can free some instead of the loop spinning on the same error.
ACCEPT_PAUSE: Final = 0.1
_RESOURCE_ERRORS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: What a head longer than ``MAX_HEAD`` gets: made once, as a Response costs its checks.
_TOO_LARGE: Final = Response(431, "Request header fields too large")

S = TypeVar("S", bound=trio.abc.Stream)


async def accept_loop(
    listener: trio.abc.Listener[S],
    nursery: trio.Nursery,
    handler: Callable[[S], Awaitable[None]],
) -> None:
    """Accept connections for ever, each into a ``handler`` task that owns its stream.

    Unlike ``trio.serve_listeners``, the stream is not closed when the handler returns:
    a WebSocket's stream may pass on to a room. The handler closes what it keeps.
    """
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                logger.error("accept failed (%s); pausing %s s", exc, ACCEPT_PAUSE)
                await trio.sleep(ACCEPT_PAUSE)
                continue
            nursery.start_soon(handler, stream)


async def close_now(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once, without a graceful goodbye, as ``trio.aclose_forcefully``.

    A plain TCP stream's socket is just closed: the forced ``aclose`` costs a cancel
    scope and a ``Cancelled`` raised and caught, which was a good part of what the end
    of each connection cost.
    """
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
    else:
        await trio.aclose_forcefully(stream)


@attrs.frozen
class Head:
    """A request head, read whole and parsed, and the bytes that came after it."""

    request: RequestHead
    #: What the client sent past the head's blank line: a WebSocket's first frames.
    rest: bytes
    #: The head as read, its blank line included (what a worker hands to another).
    raw: bytes


async def read_head(
    stream: trio.abc.ReceiveStream, received: bytes = b""
) -> Head | Response | None:
    """Read a request head until its blank line (after ``received``, read already),
    and parse it; without waiting when ``received`` holds it whole.

    Returns:
      the head; or the response that refuses it, 431 past ``MAX_HEAD`` bytes, 400 if it
      is not an HTTP request; or None if the peer left first.
    """
    buffer = bytearray(received)
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_HEAD:
            return _TOO_LARGE
        chunk = await stream.receive_some(_HEAD_CHUNK)
        if not chunk:
            return None
        buffer += chunk
    if end > MAX_HEAD:
        return _TOO_LARGE
    end += 4
    raw = bytes(buffer[:end])
    head = parse_head(raw)
    return head if isinstance(head, Response) else Head(head, bytes(buffer[end:]), raw)


def remote_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The peer's ``(host, port)``, or None if the socket has no such address, or the
    stream is not a socket's (an in-memory one, in roomkit.testing).

    Through TLS too: an ``SSLStream``'s address is its transport's.
    """
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        address = stream.socket.getpeername()
    except OSError:
        return None
    return (address[0], address[1]) if isinstance(address, tuple) else None


async def read_request(
    ssl_context: ssl.SSLContext | None, seconds: float, stream: trio.abc.Stream
) -> tuple[trio.abc.Stream, Head | Response | None, RefusalReason | None]:
    """The stream to speak on (TLS-wrapped with a context), its request head (or the
    refusal it gets: see :func:`read_head`), and why there is none when the client failed.

    The TLS handshake and the head share one deadline, ``seconds`` away: a client that
    finishes neither in time is dropped (``"timeout"``), and so is one whose TLS
    handshake fails (``"tls"``). A client that leaves gives no head and no reason.

    A plain TCP client has usually sent its whole head by the time its connection is
    served: it is then read at once, with no deadline to set (a cancel scope less per
    connection) and no wait.
    """
    received = b""
    if ssl_context is None:
        already = _received(stream)
        if already is None:
            return stream, None, None  # it left
        if b"\r\n\r\n" in already:
            return stream, await read_head(stream, already), None
        received = already
    secured: trio.abc.Stream = stream
    with trio.move_on_after(seconds):
        if ssl_context is not None:
            secured = tls = trio.SSLStream(stream, ssl_context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return secured, None, "tls"
        return secured, await read_head(secured, received), None
    return secured, None, "timeout"


def _received(stream: trio.abc.Stream) -> bytes | None:
    """What a plain TCP stream has received so far (a head's chunk at most), read
    without waiting: ``b""`` for nothing yet (or a stream that is not a socket's),
    None if the peer has left."""
    if not isinstance(stream, trio.SocketStream) or os.name != "posix":
        return b""
    try:
        return os.read(stream.socket.fileno(), _HEAD_CHUNK) or None
    except BlockingIOError:
        return b""
    except OSError:  # reset: gone
        return None
