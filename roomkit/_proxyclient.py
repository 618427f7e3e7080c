"""One client of ``proxy``: its connection, what it holds, and the frames pumped both ways.

A :class:`ProxyClient` is what the proxy keeps of a client's TCP connection: its id and
address for the logs, the stream it speaks on (through TLS if need be), the message it
is receiving, its token bucket, and the bytes it is owed; its writes go one at a time,
since both pumps write to it. :func:`pump` moves
frames between it and the backend's WebSocket until either side closes, and passes
the close on to the other.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import trio
import trio_websocket
import wsproto.utilities
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from ._accept import remote_address
from ._closecodes import CloseCode
from ._core.frames import encode_message
from ._core.frontdoor import Response
from ._core.limits import (
    CLOSE_TIMEOUT,
    RATE_LIMITED,
    TLS_CLOSE_TIMEOUT,
    MessageAssembler,
    MessageTooBig,
    byte_length,
)
from ._core.ratelimit import RateLimit, TokenBucket, Verdict
from ._ids import connection_id
from ._logs import format_address

__all__ = ["GONE", "RECEIVE_BYTES", "ProxyClient", "pump"]

#: Bytes asked of a client's socket per read.
RECEIVE_BYTES: Final = 64 * 1024
#: What a stream raises once its peer has gone.
GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
#: The close for a client that keeps sending into an empty token bucket, as a server's.
_FLOODED: Final = (int(CloseCode.POLICY_VIOLATION), "rate limit exceeded")


class ProxyClient:
    """One client's TCP connection through the proxy: what it holds, and its writes.

    Its messages are of at most ``max_message_size`` bytes, and its messages and pings
    take tokens of ``rate`` (None: no limit). It speaks on ``stream`` until the proxy
    replaces it with its TLS layer.
    """

    def __init__(
        self, stream: trio.SocketStream, max_message_size: int, rate: RateLimit | None
    ) -> None:
        self.id: Final = connection_id()
        self.stream: trio.abc.Stream = stream
        self.remote: Final = remote_address(stream)
        self.target: str | None = None  # once its request head is read
        self.ws: WSConnection | None = None  # once it is being forwarded
        self.answered = False  # whether an HTTP response (101 or refusal) went out
        self.upgraded = False  # whether that response was the 101
        self.message: Final = MessageAssembler(max_message_size)
        self.bucket: TokenBucket | None = (
            None if rate is None else TokenBucket(rate, trio.current_time())
        )
        #: Bytes held to be written: a message on its way to the backend, a frame to
        #: the client.
        self.owed = 0
        self._writing = trio.StrictFIFOLock()  # the two pumps both write to the client

    @property
    def remote_host(self) -> str | None:
        return None if self.remote is None else self.remote[0]

    def fields(self) -> dict[str, Any]:
        """What log lines about this connection carry as fields (``extra=``)."""
        return {
            "connection": self.id,
            "remote": format_address(self.remote),
            "target": self.target,
        }

    def take(self) -> Verdict:
        """Spend a token of the rate limit for a message or a ping arriving now."""
        return Verdict.ALLOW if self.bucket is None else self.bucket.take(trio.current_time())

    async def write(self, data: bytes) -> None:
        """Write ``data`` to the client, after whatever another task is writing."""
        self.owed += len(data)
        try:
            async with self._writing:
                await self.stream.send_all(data)
        finally:
            self.owed -= len(data)

    async def respond(self, answer: Response | bytes) -> None:
        """Answer the request head: a refusal, or the 101 that opens the WebSocket."""
        self.answered = True
        self.upgraded = isinstance(answer, bytes)
        await self.write(answer if isinstance(answer, bytes) else answer.to_bytes())

    async def end(self) -> None:
        """After a plain HTTP answer over TLS, end TLS properly, with a close_notify
        rather than a bare EOF, as a server does (and, as a server's, a WebSocket's
        connection ends without one)."""
        if isinstance(self.stream, trio.SSLStream) and self.answered and not self.upgraded:
            with trio.move_on_after(TLS_CLOSE_TIMEOUT), contextlib.suppress(*GONE):
                await self.stream.aclose()

    async def fail(self) -> None:
        """Tell the client, as far as it can still be told, that the proxy gave up on it."""
        with (
            trio.move_on_after(CLOSE_TIMEOUT),
            contextlib.suppress(*GONE, wsproto.utilities.LocalProtocolError),
        ):
            if not self.answered:
                await self.respond(Response(502, "Bad gateway: the proxy failed"))
            elif self.ws is not None and self.ws.state in (WSState.OPEN, WSState.REMOTE_CLOSING):
                frame = CloseConnection(CloseCode.INTERNAL_ERROR, "Internal error")
                await self.write(self.ws.send(frame))


async def pump(client: ProxyClient, upstream: trio_websocket.WebSocketConnection) -> None:
    """Frames both ways until either side closes; the other then closes the same way."""
    async with trio.open_nursery() as both:
        both.start_soon(_client_to_backend, client, upstream, both.cancel_scope)
        both.start_soon(_backend_to_client, client, upstream, both.cancel_scope)


async def _client_to_backend(
    client: ProxyClient, upstream: trio_websocket.WebSocketConnection, done: trio.CancelScope
) -> None:
    ws = client.ws
    assert ws is not None
    try:
        while True:
            data = await client.stream.receive_some(RECEIVE_BYTES)
            ws.receive_data(bytes(data) or None)
            for event in ws.events():
                close = await _from_client(client, upstream, event)
                if close is not None:
                    await _close_both(client, upstream, *close)
                    await _await_answer(client)
                    done.cancel()
                    return
    except (*GONE, trio_websocket.ConnectionClosed):
        await _close_both(client, upstream, CloseCode.ABNORMAL_CLOSURE, "")
        done.cancel()


async def _from_client(
    client: ProxyClient, upstream: trio_websocket.WebSocketConnection, event: object
) -> tuple[int, str] | None:
    """Act on one event from the client: the close to pass on to both sides, if any."""
    if isinstance(event, TextMessage | BytesMessage):
        try:
            message = client.message.feed(event.data, event.message_finished)
        except MessageTooBig:
            return CloseCode.MESSAGE_TOO_BIG, "Message too big"
        if message is not None:
            return await _pass_on(client, upstream, message)
    elif isinstance(event, Ping):
        return await _answer_ping(client, event)
    elif isinstance(event, CloseConnection):
        return event.code, event.reason or ""
    return None


async def _pass_on(
    client: ProxyClient, upstream: trio_websocket.WebSocketConnection, message: str | bytes
) -> tuple[int, str] | None:
    """Send a whole message on to the backend, as the client's rate limit decides."""
    verdict = client.take()
    if verdict is Verdict.ALLOW:
        size = byte_length(message)
        client.owed += size
        try:
            await upstream.send_message(message)
        finally:
            client.owed -= size
    elif verdict is Verdict.DROP:
        await client.write(RATE_LIMITED)
    else:
        return _FLOODED
    return None


async def _answer_ping(client: ProxyClient, ping: Ping) -> tuple[int, str] | None:
    """Answer a client's ping: it takes a token; one that finds none is not answered."""
    verdict = client.take()
    ws = client.ws
    assert ws is not None
    if verdict is Verdict.ALLOW and ws.state is WSState.OPEN:
        await client.write(ws.send(ping.response()))
    return _FLOODED if verdict is Verdict.FLOOD else None


async def _backend_to_client(
    client: ProxyClient, upstream: trio_websocket.WebSocketConnection, done: trio.CancelScope
) -> None:
    try:
        while True:
            message = await upstream.get_message()
            await client.write(encode_message(message))
    except trio_websocket.ConnectionClosed as closed:
        ws = client.ws
        if ws is not None and ws.state is WSState.LOCAL_CLOSING:
            return  # the proxy closed first: the other pump waits for the client's answer
        reason = closed.reason
        code = reason.code if reason is not None else CloseCode.ABNORMAL_CLOSURE
        await _close_both(client, upstream, code, (reason.reason or "") if reason else "")
    except GONE:
        await _close_both(client, upstream, CloseCode.ABNORMAL_CLOSURE, "")
    done.cancel()


async def _await_answer(client: ProxyClient) -> None:
    """After a close the proxy sent first (a flood, a message too big), read and drop
    what the client still sends until its answer: closed with data unread, its socket
    would be reset, and the client would see 1006 instead of the close."""
    ws = client.ws
    assert ws is not None
    with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(*GONE):
        while ws.state is WSState.LOCAL_CLOSING:
            data = await client.stream.receive_some(RECEIVE_BYTES)
            if not data:
                return
            ws.receive_data(bytes(data))
            for _ in ws.events():
                pass


async def _close_both(
    client: ProxyClient, upstream: trio_websocket.WebSocketConnection, code: int, reason: str
) -> None:
    """Pass a close on: to the client with the code the backend used, and back again.

    1005 (no code) cannot be sent: the other side gets 1000. 1006 (no close frame) is
    passed on as it happened, without a close frame: the side still there sees its TCP
    connection end (the proxy closes the backend's stream once the pump returns), so a
    backend that keeps a roomkit.v1 session for a client that vanished (its grace
    period) keeps it for a client behind the proxy too, instead of hearing a clean 1000.
    """
    ws = client.ws
    assert ws is not None
    with trio.move_on_after(CLOSE_TIMEOUT):
        if ws.state in (WSState.OPEN, WSState.REMOTE_CLOSING) and code != 1006:
            frame = CloseConnection(code if code != 1005 else 1000, reason if code != 1005 else "")
            with contextlib.suppress(*GONE):
                await client.write(ws.send(frame))
        if not upstream.closed and code != 1006:
            await upstream.aclose(code if code != 1005 else 1000, reason or None)
