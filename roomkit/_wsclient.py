"""A client WebSocket over an anyio byte stream: wsproto decides, this module moves bytes.

The Python client's own WebSocket layer, so that it runs under asyncio and Trio alike
(trio-websocket is Trio's only). :func:`open_websocket` opens the TCP connection (and
TLS, for ``wss://``) with anyio and makes the handshake; the :class:`WebSocket` it
returns is read by one task (``receive``, which also answers pings and the peer's
close) and written by any (``send``, ``ping``, ``close``: one write at a time, under a
lock). Everything the peer owes a reader has a bound: a message is assembled up to
``max_message_size`` bytes on the wire (or the limits of :meth:`WebSocket.limit`, one
for text and one for binary), by the server's own
:class:`~roomkit._core.limits.MessageAssembler`; past it the connection is closed with
1009, and :class:`MessageRefused` keeps the message's first :data:`HEAD_SIZE` bytes. A
refused handshake's body is kept up to :data:`REFUSAL_BODY_MAX`, and wsproto's h11
bounds the response head.

The exceptions the I/O can raise (``OSError``, anyio's broken and closed resources,
``ssl.SSLError``) are translated here, and only here: to :class:`HandshakeFailed`
before the WebSocket is open, to :class:`ConnectionClosed` (1006) after.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Mapping, Sequence
from typing import Final

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from ._closecodes import CloseCode
from ._core.limits import MessageAssembler, MessageTooBig
from ._wsurl import WebSocketURL

__all__ = [
    "ConnectionClosed",
    "HandshakeFailed",
    "HandshakeRefused",
    "MessageRefused",
    "WebSocket",
    "open_websocket",
]

#: Bytes asked of the stream per read.
READ_SIZE: Final = 65536
#: Bytes of a refused handshake's body kept for the error (the rest is not read).
REFUSAL_BODY_MAX: Final = 4096
#: Bytes of a message refused for its size kept for the error: enough for a
#: subprotocol's head (roomkit.v1's seq).
HEAD_SIZE: Final = 64

# What a stream raises when the peer or the network has gone (ssl.SSLError is an
# OSError): the one place it is caught.
_BROKEN: Final = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class HandshakeFailed(Exception):
    """Raised when no WebSocket could be opened: the TCP connection, TLS or the
    handshake failed (the peer spoke something else, or hung up)."""


class HandshakeRefused(Exception):
    """Raised when the server answered the handshake with an HTTP status, not 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"handshake refused with {status}")
        self.status = status
        self.body = body


class ConnectionClosed(Exception):
    """Raised by a :class:`WebSocket` once it is closed: ``code`` and ``reason`` are the
    close frame's (the peer's, or ours when we closed first for a fault of the peer's),
    or 1006 when the connection was lost without one. ``code`` is a plain ``int``,
    never wsproto's ``CloseReason``, which would leak into ``CloseEvent`` and
    ``ClientClosed`` (and their reprs) as a type roomkit does not export."""

    def __init__(self, code: int, reason: str = "") -> None:
        code = int(code)
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class MessageRefused(ConnectionClosed):
    """Raised by :meth:`WebSocket.receive` once it has closed the connection (1009) for
    a message over its limit: ``head`` is the message's first bytes (UTF-8 for text, up
    to :data:`HEAD_SIZE`), ``binary`` its kind."""

    def __init__(self, reason: str, head: bytes, *, binary: bool) -> None:
        super().__init__(CloseCode.MESSAGE_TOO_BIG, reason)
        self.head = head
        self.binary = binary


async def open_websocket(
    url: WebSocketURL,
    *,
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    max_message_size: int,
    connect_timeout: float,
    subprotocols: Sequence[str] = (),
) -> WebSocket:
    """Connect to ``url`` and make the WebSocket handshake: ``connect_timeout`` seconds for the
    TCP connection (TLS included), and again for the handshake. ``subprotocols`` are
    offered; the one the server selects, if any, is the WebSocket's ``subprotocol``.

    Raises:
      HandshakeRefused: the server answered with another status than 101.
      HandshakeFailed: anything else that kept the WebSocket from opening.
    """
    try:
        with anyio.fail_after(connect_timeout):
            stream = await _connect(url, ssl_context)
    except (*_BROKEN, TimeoutError) as exc:
        raise HandshakeFailed(f"connecting to {url.host_header} failed: {exc!r}") from exc
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host=url.host_header,
            target=url.resource,
            extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            subprotocols=list(subprotocols),
        )
        with anyio.fail_after(connect_timeout):
            await _write_or_fail(stream, ws.send(request))
            subprotocol = await _read_response(stream, ws)
    except TimeoutError as exc:
        await anyio.aclose_forcefully(stream)
        raise HandshakeFailed(f"no handshake response within {connect_timeout} s") from exc
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    return WebSocket(stream, ws, max_message_size, subprotocol)


async def _connect(url: WebSocketURL, ssl_context: ssl.SSLContext | None) -> anyio.abc.ByteStream:
    if not url.secure:
        return await anyio.connect_tcp(url.host, url.port)
    # Not "standard compatible" TLS: the WebSocket's closing handshake says where the
    # data ends, so a peer that hangs up without TLS's close_notify is no error, and
    # closing does not wait for the peer's close_notify.
    return await anyio.connect_tcp(
        url.host, url.port, tls=True, ssl_context=ssl_context, tls_standard_compatible=False
    )


async def _write_or_fail(stream: anyio.abc.ByteStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except _BROKEN as exc:
        raise HandshakeFailed(f"handshake failed: {exc!r}") from exc


async def _read_response(stream: anyio.abc.ByteStream, ws: WSConnection) -> str | None:
    """Read the handshake's answer: once accepted, the subprotocol it selected (wsproto
    checks that it was one offered); else raise why not."""
    refusal: RejectConnection | None = None
    body = b""
    try:
        while True:
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return event.subprotocol  # frames that came with it stay in ws
                if isinstance(event, RejectConnection):
                    refusal = event
                    if not event.has_body:
                        raise HandshakeRefused(event.status_code, b"")
                elif isinstance(event, RejectData) and refusal is not None:
                    body += event.data
                    if event.body_finished or len(body) >= REFUSAL_BODY_MAX:
                        raise HandshakeRefused(refusal.status_code, body[:REFUSAL_BODY_MAX])
            ws.receive_data(await _receive_or_eof(stream))
    except ProtocolError as exc:  # h11's or wsproto's: not an HTTP answer to a handshake
        if refusal is not None:  # cut short in its body: still a refusal
            raise HandshakeRefused(refusal.status_code, body) from exc
        raise HandshakeFailed(f"bad handshake response: {exc}") from exc
    except _BROKEN as exc:
        raise HandshakeFailed(f"handshake failed: {exc!r}") from exc


async def _receive_or_eof(stream: anyio.abc.ByteStream) -> bytes | None:
    """The next bytes from the stream; None once the peer has hung up."""
    try:
        return await stream.receive(READ_SIZE)
    except anyio.EndOfStream:
        return None


class WebSocket:
    """An open client WebSocket: read by one task, written by any. ``subprotocol`` is
    the one the server selected, or None."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        ws: WSConnection,
        max_message_size: int,
        subprotocol: str | None = None,
    ) -> None:
        self.subprotocol = subprotocol
        self._stream = stream
        self._ws = ws
        self._write_lock = anyio.Lock()
        self._limits = (max_message_size, max_message_size)  # text, binary
        self._text = self._binary = MessageAssembler(max_message_size)  # one at a time
        self._head = b""  # the first bytes of a message received in part
        self._pongs: dict[bytes, anyio.Event] = {}  # pings sent, by payload, awaiting a pong
        self._closed: ConnectionClosed | None = None

    async def receive(self) -> str | bytes:
        """The next message. Answers pings, and the peer's close, on the way.

        Raises:
          ConnectionClosed: once the connection is closed, for good.
        """
        while True:
            if self._closed is not None:
                raise self._closed
            for event in self._ws.events():
                message = await self._handle(event)
                if message is not None:
                    return message
                if self._closed is not None:
                    raise self._closed
            try:
                data = await _receive_or_eof(self._stream)
            except _BROKEN:
                data = None
            self._ws.receive_data(data)

    async def send(self, message: str | bytes) -> None:
        """Send one message (text for ``str``, binary for ``bytes``).

        Raises:
          ConnectionClosed: if the connection is closed or closing.
        """
        if self._ws.state is not ConnectionState.OPEN:
            raise self._closed or ConnectionClosed(CloseCode.ABNORMAL_CLOSURE, "closing")
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        await self._write(self._ws.send(event))

    async def ping(self) -> None:
        """Send a ping and wait for its pong; the caller bounds the wait.

        Raises:
          ConnectionClosed: if the connection closes first.
        """
        payload = os.urandom(4)
        pong = self._pongs[payload] = anyio.Event()
        try:
            await self.send_frame(Ping(payload))
            await pong.wait()
        finally:
            del self._pongs[payload]
        if self._closed is not None:
            raise self._closed

    def limit(self, text: int, binary: int) -> None:
        """Assemble text messages of up to ``text`` bytes and binary ones of up to
        ``binary`` from now on (before the first :meth:`receive`: a subprotocol's frames
        may be longer than their content, and differently so for each kind)."""
        self._limits = (text, binary)
        self._text, self._binary = MessageAssembler(text), MessageAssembler(binary)

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame; the peer's answer ends :meth:`receive`. Nothing to do on a
        connection that is already closing."""
        if self._ws.state is ConnectionState.OPEN:
            await self.send_frame(CloseConnection(code, reason))

    async def aclose(self) -> None:
        """Close the TCP connection (without a closing handshake: see :meth:`close`)."""
        self._lose(ConnectionClosed(CloseCode.ABNORMAL_CLOSURE))
        await anyio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def send_frame(self, event: Event) -> None:
        """Send a control frame (a ping, a close)."""
        try:
            data = self._ws.send(event)
        except ProtocolError as exc:  # closed meanwhile
            raise self._closed or ConnectionClosed(CloseCode.ABNORMAL_CLOSURE) from exc
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self._stream.send(data)
            except _BROKEN as exc:
                self._lose(ConnectionClosed(CloseCode.ABNORMAL_CLOSURE))
                raise ConnectionClosed(CloseCode.ABNORMAL_CLOSURE) from exc

    async def _handle(self, event: Event) -> str | bytes | None:
        """Carry out what one event asks; a message once it is whole."""
        if isinstance(event, TextMessage | BytesMessage):
            return await self._assemble(event)
        if isinstance(event, Ping):
            await self._answer(event.response())
        elif isinstance(event, Pong):
            pong = self._pongs.get(bytes(event.payload))
            if pong is not None:
                pong.set()
        elif isinstance(event, CloseConnection):
            await self._closing(event)
        return None

    async def _assemble(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        binary = isinstance(event, BytesMessage)
        assembler = self._binary if binary else self._text
        try:
            message = assembler.feed(event.data, event.message_finished)
        except MessageTooBig:
            head, self._head = self._head + _head(event.data), b""
            kind = "binary" if binary else "text"
            reason = f"a {kind} message is at most {self._limits[binary]} bytes"
            await self._answer(CloseConnection(CloseCode.MESSAGE_TOO_BIG, reason))
            self._lose(MessageRefused(reason, head[:HEAD_SIZE], binary=binary))
            return None
        if message is not None:
            self._head = b""
        elif len(self._head) < HEAD_SIZE:  # kept, should the rest take it over its limit
            self._head += _head(event.data)
        return message

    async def _closing(self, event: CloseConnection) -> None:
        """The peer's close (answered), the end of ours, a lost connection, or a frame
        wsproto could not parse (wsproto leaves the state OPEN: we close, with its code)."""
        if self._ws.state is ConnectionState.OPEN:
            await self.fail(event.code, event.reason or "")
            return
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            await self._answer(event.response())
        self._lose(ConnectionClosed(event.code, event.reason or ""))

    async def fail(self, code: int, reason: str) -> None:
        """Close for a fault of the peer's, without waiting for its answer: the next
        :meth:`receive` raises ``ConnectionClosed(code, reason)``."""
        await self._answer(CloseConnection(code, reason))
        self._lose(ConnectionClosed(code, reason))

    async def _answer(self, event: Event) -> None:
        """Send a pong or a close frame from the reader; a connection lost meanwhile
        is found by the next read."""
        with contextlib.suppress(ConnectionClosed):
            await self.send_frame(event)

    def _lose(self, closed: ConnectionClosed) -> None:
        """Record the end (the first one recorded stays), and wake waiting pings."""
        if self._closed is None:
            self._closed = closed
        for pong in self._pongs.values():
            pong.set()


def _head(data: str | bytes | bytearray) -> bytes:
    """The first bytes of a message's data, as bytes (UTF-8 for text)."""
    part = data[:HEAD_SIZE]
    return part.encode("utf-8") if isinstance(part, str) else bytes(part)
