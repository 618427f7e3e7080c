"""``proxy``: forward WebSockets to a backend, frames and closes unchanged.

The first mode of the Durable Objects WebSocket guide: a front that accepts a client's
WebSocket, opens one to the backend with the same path and query and the headers that
matter, and pumps frames both ways. Each pair lives in its own nursery, so either side
ending ends both.

What the client gets when things go wrong: plain HTTP → 426 (``/roomkit.js`` and
``/healthz`` are served); a backend that cannot be reached → 502; a backend that
refuses the handshake → its status and body, passed through.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import trio
import trio_websocket
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from ._accept import accept_loop, read_head, remote_address
from ._closecodes import CloseCode
from ._errors import first_leaf
from ._frames import encode_message
from ._frontdoor import RequestHead, Response, handshake_response, parse_head, plain_response
from ._limits import CLOSE_TIMEOUT
from ._server import Server
from ._static import static_files
from ._statistics import ServerStatistics
from ._wsurl import WebSocketURL

__all__ = ["proxy"]

logger = logging.getLogger("roomkit.proxy")

#: Request headers passed on to the backend: who the client is, and what it may do.
FORWARDED_HEADERS: Final = ("origin", "cookie", "authorization", "user-agent")
#: Seconds the backend has to answer the handshake before the client gets 502.
BACKEND_TIMEOUT: Final = 10.0
#: Largest message passed through, in bytes.
MAX_MESSAGE: Final = 16 * 1024 * 1024
_RECEIVE_BYTES: Final = 64 * 1024


async def proxy(
    backend_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    handshake_timeout: float = 10.0,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forward every WebSocket to ``backend_url`` until cancelled or :meth:`Server.shutdown`.

    Args:
      backend_url: ``ws://host:port`` (or ``wss://``) of the backend; a client's path
        and query are appended to it.
      host, port: where to listen (port 0 picks one; see ``Server.port``).
      handshake_timeout: seconds a client has to send its request head.
      task_status: for ``nursery.start``, which returns a :class:`Server` once listening.
    """
    backend = WebSocketURL.parse(backend_url)
    files = static_files()
    listeners = await trio.open_tcp_listeners(port, host=host)
    clients = 0  # TCP connections being served

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal clients
        clients += 1
        try:
            await _front_door(backend, files, handshake_timeout, stream)
        finally:
            clients -= 1

    def statistics() -> ServerStatistics:
        return ServerStatistics(
            rooms=0, connections=clients, send_queue_bytes=0, receive_buffer_bytes=0, timers=0
        )

    server = Server(host, listeners[0].socket.getsockname()[1], statistics=statistics)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery, handler)
        task_status.started(server)
        await server._stop.wait()
        nursery.cancel_scope.cancel()


async def _front_door(
    backend: WebSocketURL,
    files: dict[str, Response],
    head_seconds: float,
    stream: trio.SocketStream,
) -> None:
    try:
        await _answer(backend, files, head_seconds, stream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client left; nothing to tell it


async def _answer(
    backend: WebSocketURL,
    files: dict[str, Response],
    head_seconds: float,
    stream: trio.SocketStream,
) -> None:
    async with stream:
        raw: bytes | Response | None = None
        with trio.move_on_after(head_seconds):
            raw = await read_head(stream)
        if raw is None:
            return
        if isinstance(raw, Response):
            await stream.send_all(raw.to_bytes())
            return
        end = raw.index(b"\r\n\r\n") + 4
        head = parse_head(raw[:end])
        if isinstance(head, Response):
            answer: bytes | Response = head
        elif not head.is_websocket:
            answer = plain_response(head, files)
        else:
            answer = handshake_response(head)
        if isinstance(answer, Response):
            await stream.send_all(answer.to_bytes())
            return
        assert isinstance(head, RequestHead)
        client = WSConnection(ConnectionType.SERVER, trailing_data=raw[end:])
        await _forward(backend, head, answer, stream, client)


async def _forward(
    backend: WebSocketURL,
    head: RequestHead,
    accept: bytes,
    stream: trio.SocketStream,
    client: WSConnection,
) -> None:
    """Open the backend's side, then answer the client: 101, or the backend's refusal."""
    try:
        with trio.fail_after(BACKEND_TIMEOUT):
            upstream_stream = await backend.open_stream()
    except (OSError, trio.TooSlowError) as exc:
        logger.warning("proxy: backend %s unreachable: %s", backend.host_header, exc)
        await stream.send_all(
            Response(502, "Bad gateway: the backend cannot be reached").to_bytes()
        )
        return
    accepted = False
    try:
        async with upstream_stream, trio.open_nursery() as pair:
            with trio.fail_after(BACKEND_TIMEOUT):
                upstream = await trio_websocket.wrap_client_stream(
                    pair,
                    upstream_stream,
                    backend.host_header,
                    backend.path.rstrip("/") + head.target,
                    subprotocols=_subprotocols(head),
                    extra_headers=_forwarded(head, stream),
                    max_message_size=MAX_MESSAGE,
                )
            chosen = upstream.subprotocol
            if chosen:
                accept = accept[:-2] + f"Sec-WebSocket-Protocol: {chosen}\r\n\r\n".encode()
            await stream.send_all(accept)
            accepted = True
            await _pump(stream, client, upstream)
            pair.cancel_scope.cancel()
    except* trio_websocket.ConnectionRejected as group:
        refusal = first_leaf(group)
        assert isinstance(refusal, trio_websocket.ConnectionRejected)
        body = refusal.body or b""
        await stream.send_all(Response(refusal.status_code, body).to_bytes())
    except* (trio_websocket.HandshakeError, trio.TooSlowError, OSError):
        if not accepted:  # after the 101, the pump has already told the client
            await stream.send_all(Response(502, "Bad gateway: the backend failed").to_bytes())


async def _pump(
    stream: trio.SocketStream, client: WSConnection, upstream: trio_websocket.WebSocketConnection
) -> None:
    """Frames both ways until either side closes; the other then closes the same way."""
    async with trio.open_nursery() as both:
        both.start_soon(_client_to_backend, stream, client, upstream, both.cancel_scope)
        both.start_soon(_backend_to_client, stream, client, upstream, both.cancel_scope)


async def _client_to_backend(
    stream: trio.SocketStream,
    client: WSConnection,
    upstream: trio_websocket.WebSocketConnection,
    done: trio.CancelScope,
) -> None:
    parts: list[Any] = []
    size = 0
    try:
        while True:
            data = await stream.receive_some(_RECEIVE_BYTES)
            client.receive_data(data or None)
            for event in client.events():
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    size += len(event.data)  # characters, for text: no more than bytes
                    if size > MAX_MESSAGE:
                        code, why = CloseCode.MESSAGE_TOO_BIG, "Message too big"
                        await _close_both(stream, client, upstream, code, why)
                        done.cancel()
                        return
                    if event.message_finished:
                        size = 0
                        text = isinstance(parts[0], str)
                        message = "".join(parts) if text else b"".join(parts)
                        parts = []
                        await upstream.send_message(message)
                elif isinstance(event, Ping):
                    await stream.send_all(client.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await _close_both(stream, client, upstream, event.code, event.reason or "")
                    done.cancel()
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
        await _close_both(stream, client, upstream, CloseCode.ABNORMAL_CLOSURE, "")
        done.cancel()


async def _backend_to_client(
    stream: trio.SocketStream,
    client: WSConnection,
    upstream: trio_websocket.WebSocketConnection,
    done: trio.CancelScope,
) -> None:
    try:
        while True:
            message = await upstream.get_message()
            await stream.send_all(encode_message(message))
    except trio_websocket.ConnectionClosed as closed:
        reason = closed.reason
        code = reason.code if reason is not None else CloseCode.ABNORMAL_CLOSURE
        await _close_both(stream, client, upstream, code, (reason.reason or "") if reason else "")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await _close_both(stream, client, upstream, CloseCode.ABNORMAL_CLOSURE, "")
    done.cancel()


async def _close_both(
    stream: trio.SocketStream,
    client: WSConnection,
    upstream: trio_websocket.WebSocketConnection,
    code: int,
    reason: str,
) -> None:
    """Pass a close on: to the client with the code the backend used, and back again.

    1005 (no code) and 1006 (no close frame) cannot be sent: for 1005 the other side
    gets 1000, for 1006 the client's TCP connection ends and the backend gets 1000.
    """
    with trio.move_on_after(CLOSE_TIMEOUT):
        if client.state in (WSState.OPEN, WSState.REMOTE_CLOSING) and code != 1006:
            frame = CloseConnection(code if code != 1005 else 1000, reason if code != 1005 else "")
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(client.send(frame))
        if not upstream.closed:
            await upstream.aclose(code if code not in (1005, 1006) else 1000, reason or None)


def _subprotocols(head: RequestHead) -> list[str]:
    offered = head.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in offered.split(",") if p.strip()]


def _forwarded(head: RequestHead, stream: trio.SocketStream) -> list[tuple[bytes, bytes]]:
    headers = [
        (name.encode(), head.headers[name].encode("latin-1"))
        for name in FORWARDED_HEADERS
        if name in head.headers
    ]
    remote = remote_address(stream)
    if remote is not None:
        seen = head.headers.get("x-forwarded-for")
        chain = f"{seen}, {remote[0]}" if seen else remote[0]
        headers.append((b"x-forwarded-for", chain.encode("latin-1")))
    return headers
