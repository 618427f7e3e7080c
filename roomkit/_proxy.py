"""``proxy``: forward WebSockets to a backend, frames and closes unchanged.

The first mode of the Durable Objects WebSocket guide: a front that accepts a client's
WebSocket, opens one to the backend with the same path and query and the headers that
matter, and pumps frames both ways. Each pair lives in its own nursery, so either side
ending ends both.

What the client gets when things go wrong: plain HTTP → 426 (``/roomkit.js`` and
``/healthz`` are served); a request the proxy will not pass on (see ``_core.forwarding``)
→ 400; a backend that cannot be reached or answers nonsense → 502; a backend that
refuses the handshake → its status and body, passed through.

Each client gets the limits a server would give it (``_core.limits``): messages of at most
``max_message_size`` bytes (1009 beyond), the same token bucket (a dropped message is
answered with the server's ``rate_limited`` error, a flood closed with 1008), at most
``max_connections`` WebSockets at once (503 beyond), and ``handshake_timeout`` to send
its request head.

Whatever goes wrong while serving one client ends that client's connection only (502
before the 101, a close with 1011 after it), and is logged with the connection's id on
the ``roomkit.proxy`` logger and counted; it never reaches the proxy's own nursery.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any, Final, TypedDict, Unpack

import h11
import trio
import trio_websocket
import wsproto.utilities
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from ._accept import accept_loop, read_head, remote_address
from ._closecodes import CloseCode
from ._core.forwarding import forwarded_headers, forwarding_error, subprotocols
from ._core.frames import encode_message
from ._core.frontdoor import RequestHead, Response, handshake_response, parse_head, plain_response
from ._core.limits import (
    CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_MESSAGE_SIZE,
    RATE_LIMIT,
    RATE_LIMITED,
    MessageAssembler,
    MessageTooBig,
    byte_length,
)
from ._core.ratelimit import RateLimit, TokenBucket, Verdict
from ._errors import first_leaf
from ._ids import connection_id
from ._logs import format_address
from ._options import (
    HOST,
    PORT,
    Option,
    OptionSet,
    check_count,
    check_positive_seconds,
    positive_int,
    positive_seconds,
    rate_limit,
)
from ._server import Server
from ._static import static_files
from ._statistics import ServerStatistics
from ._wsurl import WebSocketURL

__all__ = ["PROXY_OPTIONS", "ProxyOptions", "proxy"]

logger = logging.getLogger("roomkit.proxy")

#: Seconds the backend has to answer the handshake before the client gets 502.
BACKEND_TIMEOUT: Final = 10.0
#: Bytes asked of a client's socket per read.
_RECEIVE_BYTES: Final = 64 * 1024
#: Errors of a backend that answers the handshake with something that is not HTTP or
#: not a WebSocket's answer (a bare 101, say), as trio-websocket lets them through.
_BACKEND_NONSENSE: Final = (
    trio_websocket.HandshakeError,
    h11.ProtocolError,
    wsproto.utilities.ProtocolError,
)
_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
#: The close for a client that keeps sending into an empty token bucket, as a server's.
_FLOODED: Final = (int(CloseCode.POLICY_VIOLATION), "rate limit exceeded")


def _check_rate_limit(name: str, value: object) -> None:
    if value is not None and not isinstance(value, RateLimit):
        raise TypeError(f"{name} must be a RateLimit or None, not {value!r}")


class ProxyOptions(TypedDict, total=False):
    """The options of :func:`proxy`, every one a keyword; the limits are a server's
    defaults (``roomkit.Room``'s), so that clients get from the proxy what they would
    get from the server behind it.

    Each is also a flag of ``roomkit proxy`` and a ``ROOMKIT_PROXY_*`` environment
    variable (``max_message_size``: ``--max-message-size``,
    ``ROOMKIT_PROXY_MAX_MESSAGE_SIZE``).

    Keys:
      host, port: where to listen (port 0 picks one; see ``ProxyServer.port``).
      handshake_timeout: seconds a client has to send its request head.
      max_message_size: bytes; a bigger message from a client closes both sides with
        1009, and one from the backend does too. Nothing past it is buffered.
      max_connections: WebSockets forwarded at once; beyond, handshakes get 503.
      rate_limit: a token bucket for each client's messages and pings, as
        ``Room.rate_limit``: a message with no token is dropped and answered with a
        ``rate_limited`` error, a client that keeps flooding is closed with 1008 (and
        its backend connection too). None for no limit.
    """

    host: Annotated[str, HOST]
    port: Annotated[int, PORT]
    handshake_timeout: Annotated[
        float,
        Option(
            default=HANDSHAKE_TIMEOUT,
            group="limits",
            parse=positive_seconds,
            check=check_positive_seconds,
            metavar="SECONDS",
            help="time a client has to send its request head; a slower one is dropped",
        ),
    ]
    max_message_size: Annotated[
        int,
        Option(
            default=MAX_MESSAGE_SIZE,
            group="limits",
            parse=positive_int,
            check=check_count,
            metavar="BYTES",
            help="largest message passed on, either way; a bigger one closes both sides with 1009",
        ),
    ]
    max_connections: Annotated[
        int,
        Option(
            default=MAX_CONNECTIONS,
            group="limits",
            parse=positive_int,
            check=check_count,
            metavar="N",
            help="WebSockets forwarded at once; beyond, handshakes get 503",
        ),
    ]
    rate_limit: Annotated[
        RateLimit | None,
        Option(
            default=RATE_LIMIT,
            group="limits",
            parse=rate_limit,
            check=_check_rate_limit,
            metavar="PER_SECOND,BURST",
            shown=f"{RATE_LIMIT.per_second:g},{RATE_LIMIT.burst}",
            help="each client's messages (and pings) a second, and bursts; beyond, a message "
            "is dropped with an error, and a client that keeps on is closed with 1008; off "
            "for none",
        ),
    ]


#: proxy's options, read from :class:`ProxyOptions`.
PROXY_OPTIONS: Final = OptionSet[ProxyOptions](ProxyOptions, "proxy")


async def proxy(
    backend_url: str,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **options: Unpack[ProxyOptions],
) -> None:
    """Forward every WebSocket to ``backend_url`` until cancelled or :meth:`Server.shutdown`.

    Args:
      backend_url: ``ws://host:port`` (or ``wss://``) of the backend; a client's path
        and query are appended to it.
      task_status: for ``nursery.start``, which returns a :class:`Server` once listening.
      options: the keywords of :class:`ProxyOptions` (``host``, ``port``, the limits),
        each left out at its default.

    ``Server.statistics()`` counts the client TCP connections being served, the bytes of
    client messages received in part (``receive_buffer_bytes``, each within
    ``max_message_size``), and the bytes being written (``send_queue_bytes``): for each
    client, at most a message on its way to the backend and a frame on its way back,
    and a pong or an error reply waiting behind it. Not counted: what trio-websocket
    holds of the backend's side, at most one message read and one being read per
    client, each within ``max_message_size`` (in characters, for text).

    Raises:
      ValueError: for a ``backend_url`` that is not a WebSocket URL, or a bad limit
        (TypeError for a ``rate_limit`` that is not a ``RateLimit``).
    """
    backend = WebSocketURL.parse(backend_url)
    limits = PROXY_OPTIONS.complete(options)
    front = _Proxy(backend, limits)
    host = limits["host"]
    listeners = await trio.open_tcp_listeners(limits["port"], host=host)
    server = Server(host, listeners[0].socket.getsockname()[1], statistics=front.statistics)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery, front.serve_client)
        task_status.started(server)
        await server._stop.wait()
        nursery.cancel_scope.cancel()


class _Client:
    """One client's TCP connection through the proxy: what it holds, and its writes."""

    def __init__(self, stream: trio.SocketStream, limits: ProxyOptions) -> None:
        self.id: Final = connection_id()
        self.stream: Final = stream
        self.remote: Final = remote_address(stream)
        self.target: str | None = None  # once its request head is read
        self.ws: WSConnection | None = None  # once it is being forwarded
        self.answered = False  # whether an HTTP response (101 or refusal) went out
        self.message: Final = MessageAssembler(limits["max_message_size"])
        rate = limits["rate_limit"]
        self.bucket: TokenBucket | None = None if rate is None else rate.bucket(trio.current_time())
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
        await self.write(answer if isinstance(answer, bytes) else answer.to_bytes())

    async def fail(self) -> None:
        """Tell the client, as far as it can still be told, that the proxy gave up on it."""
        with (
            trio.move_on_after(CLOSE_TIMEOUT),
            contextlib.suppress(*_GONE, wsproto.utilities.LocalProtocolError),
        ):
            if not self.answered:
                await self.respond(Response(502, "Bad gateway: the proxy failed"))
            elif self.ws is not None and self.ws.state in (WSState.OPEN, WSState.REMOTE_CLOSING):
                frame = CloseConnection(CloseCode.INTERNAL_ERROR, "Internal error")
                await self.write(self.ws.send(frame))


class _Proxy:
    """The clients of one ``proxy``: serving each, and counting what they hold."""

    def __init__(self, backend: WebSocketURL, limits: ProxyOptions) -> None:
        self._backend = backend
        self._limits = limits
        self._files = static_files()
        self._clients: set[_Client] = set()  # every TCP connection being served
        self._forwarding = 0  # of which WebSockets, counted against max_connections
        self.failures = 0  # connections ended by an unexpected error

    def statistics(self) -> ServerStatistics:
        clients = self._clients
        return ServerStatistics(
            rooms=0,
            connections=len(clients),
            send_queue_bytes=sum(client.owed for client in clients),
            receive_buffer_bytes=sum(client.message.buffered for client in clients),
            timers=0,
        )

    async def serve_client(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; whatever goes wrong with it ends it, and only it."""
        client = _Client(stream, self._limits)
        self._clients.add(client)
        try:
            async with stream:
                try:
                    await self._answer(client)
                except* _GONE:
                    pass  # the client left; nothing to tell it
                except* Exception:
                    self.failures += 1
                    fields = client.fields() | {"failures": self.failures}
                    logger.exception("proxy: %s failed", client.id, extra=fields)
                    await client.fail()
        finally:
            self._clients.discard(client)

    async def _answer(self, client: _Client) -> None:
        raw: bytes | Response | None = None
        with trio.move_on_after(self._limits["handshake_timeout"]):
            raw = await read_head(client.stream)
        if raw is None:
            return
        if isinstance(raw, Response):
            await client.respond(raw)
            return
        end = raw.index(b"\r\n\r\n") + 4
        head = parse_head(raw[:end])
        answer = _door(head, self._files)
        if isinstance(answer, Response):
            await client.respond(answer)
            return
        assert isinstance(head, RequestHead)
        client.target = head.target
        if self._forwarding >= self._limits["max_connections"]:
            await client.respond(Response(503, "Server is full"))
            return
        self._forwarding += 1
        try:
            client.ws = WSConnection(ConnectionType.SERVER, trailing_data=raw[end:])
            await self._forward(client, head, answer)
        finally:
            self._forwarding -= 1

    async def _forward(self, client: _Client, head: RequestHead, accept: bytes) -> None:
        """Open the backend's side, then answer the client: 101, or the backend's refusal."""
        backend = self._backend
        try:
            with trio.fail_after(BACKEND_TIMEOUT):
                upstream_stream = await backend.open_stream()
        except (OSError, trio.TooSlowError) as exc:
            logger.warning(
                "proxy: backend %s unreachable: %s", backend.host_header, exc, extra=client.fields()
            )
            await client.respond(Response(502, "Bad gateway: the backend cannot be reached"))
            return
        try:
            async with upstream_stream, trio.open_nursery() as pair:
                with trio.fail_after(BACKEND_TIMEOUT):
                    upstream = await trio_websocket.wrap_client_stream(
                        pair,
                        upstream_stream,
                        backend.host_header,
                        backend.path.rstrip("/") + head.target,
                        subprotocols=subprotocols(head),
                        extra_headers=forwarded_headers(head, client.remote_host),
                        max_message_size=self._limits["max_message_size"],
                        message_queue_size=0,  # a message is held by the pump, not queued
                        receive_buffer_size=_RECEIVE_BYTES,
                    )
                chosen = upstream.subprotocol
                if chosen:
                    accept = accept[:-2] + f"Sec-WebSocket-Protocol: {chosen}\r\n\r\n".encode()
                await client.respond(accept)
                await _pump(client, upstream)
                pair.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected as group:
            refusal = first_leaf(group)
            assert isinstance(refusal, trio_websocket.ConnectionRejected)
            await client.respond(_passed_on(refusal))
        except* (*_BACKEND_NONSENSE, trio.TooSlowError, OSError) as group:
            if not client.answered:  # after the 101, the pump has already told the client
                logger.warning(
                    "proxy: backend %s failed the handshake: %r",
                    backend.host_header,
                    first_leaf(group),
                    extra=client.fields(),
                )
                await client.respond(Response(502, "Bad gateway: the backend failed"))


def _door(head: RequestHead | Response, files: dict[str, Response]) -> Response | bytes:
    """What a client's request head gets at the proxy: a response, or the 101 to send
    once the backend has accepted."""
    if isinstance(head, Response):
        return head
    if not head.is_websocket:
        return plain_response(head, files)
    answer = handshake_response(head)
    if isinstance(answer, Response):
        return answer
    problem = forwarding_error(head)
    return answer if problem is None else Response(400, f"Bad request: {problem}")


def _passed_on(refusal: trio_websocket.ConnectionRejected) -> Response:
    """The response that passes the backend's refusal on to the client.

    Every HTTP error status passes, those ``http.HTTPStatus`` does not name (499) with
    their class's phrase; a status that is not an HTTP error becomes 502.
    """
    status = refusal.status_code
    if not 400 <= status <= 599:
        return Response(502, f"Bad gateway: the backend answered {status}")
    return Response(status, refusal.body or b"")


async def _pump(client: _Client, upstream: trio_websocket.WebSocketConnection) -> None:
    """Frames both ways until either side closes; the other then closes the same way."""
    async with trio.open_nursery() as both:
        both.start_soon(_client_to_backend, client, upstream, both.cancel_scope)
        both.start_soon(_backend_to_client, client, upstream, both.cancel_scope)


async def _client_to_backend(
    client: _Client, upstream: trio_websocket.WebSocketConnection, done: trio.CancelScope
) -> None:
    ws = client.ws
    assert ws is not None
    try:
        while True:
            data = await client.stream.receive_some(_RECEIVE_BYTES)
            ws.receive_data(data or None)
            for event in ws.events():
                close = await _from_client(client, upstream, event)
                if close is not None:
                    await _close_both(client, upstream, *close)
                    await _await_answer(client)
                    done.cancel()
                    return
    except (*_GONE, trio_websocket.ConnectionClosed):
        await _close_both(client, upstream, CloseCode.ABNORMAL_CLOSURE, "")
        done.cancel()


async def _from_client(
    client: _Client, upstream: trio_websocket.WebSocketConnection, event: object
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
    client: _Client, upstream: trio_websocket.WebSocketConnection, message: str | bytes
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


async def _answer_ping(client: _Client, ping: Ping) -> tuple[int, str] | None:
    """Answer a client's ping: it takes a token; one that finds none is not answered."""
    verdict = client.take()
    ws = client.ws
    assert ws is not None
    if verdict is Verdict.ALLOW and ws.state is WSState.OPEN:
        await client.write(ws.send(ping.response()))
    return _FLOODED if verdict is Verdict.FLOOD else None


async def _backend_to_client(
    client: _Client, upstream: trio_websocket.WebSocketConnection, done: trio.CancelScope
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
    except _GONE:
        await _close_both(client, upstream, CloseCode.ABNORMAL_CLOSURE, "")
    done.cancel()


async def _await_answer(client: _Client) -> None:
    """After a close the proxy sent first (a flood, a message too big), read and drop
    what the client still sends until its answer: closed with data unread, its socket
    would be reset, and the client would see 1006 instead of the close."""
    ws = client.ws
    assert ws is not None
    with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(*_GONE):
        while ws.state is WSState.LOCAL_CLOSING:
            data = await client.stream.receive_some(_RECEIVE_BYTES)
            if not data:
                return
            ws.receive_data(data)
            for _ in ws.events():
                pass


async def _close_both(
    client: _Client, upstream: trio_websocket.WebSocketConnection, code: int, reason: str
) -> None:
    """Pass a close on: to the client with the code the backend used, and back again.

    1005 (no code) and 1006 (no close frame) cannot be sent: for 1005 the other side
    gets 1000, for 1006 the client's TCP connection ends and the backend gets 1000.
    """
    ws = client.ws
    assert ws is not None
    with trio.move_on_after(CLOSE_TIMEOUT):
        if ws.state in (WSState.OPEN, WSState.REMOTE_CLOSING) and code != 1006:
            frame = CloseConnection(code if code != 1005 else 1000, reason if code != 1005 else "")
            with contextlib.suppress(*_GONE):
                await client.write(ws.send(frame))
        if not upstream.closed:
            await upstream.aclose(code if code not in (1005, 1006) else 1000, reason or None)
